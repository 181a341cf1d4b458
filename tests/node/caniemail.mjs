// Reads one email's HTML on stdin and prints, as JSON, what the caniemail.com data
// (through @jsx-email/doiuse-email) says about it for the email clients named:
//
//   node caniemail.mjs 'gmail.*' 'apple-mail.*' 'outlook.*' < email.html
//   {"errors": ["`@media` is not supported by `outlook.windows`", ...], "warnings": [...]}
//
// errors: features those clients do not support; warnings: features they support in
// part. Each message appears once, however often the email uses the feature.
import { readFileSync } from "node:fs";
import { doIUseEmail } from "@jsx-email/doiuse-email";

const clients = process.argv.slice(2);
if (clients.length === 0) {
  console.error("usage: node caniemail.mjs CLIENT_GLOB... < email.html");
  process.exit(2);
}

const result = doIUseEmail(readFileSync(0, "utf8"), { emailClients: clients });
const distinct = (messages) => [...new Set(messages ?? [])];
process.stdout.write(
  `${JSON.stringify({ errors: distinct(result.errors), warnings: distinct(result.warnings) })}\n`,
);
