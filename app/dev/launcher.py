"""`make run`: start the web app, a worker and the scheduler, plus embedded Redis and mail.

Anything given by REDIS_URL or SMTP_URL is used as it is; what is missing is started
here and stopped again on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller

from app.config import ConfigError, Settings
from app.db import make_engine, migrate
from app.dev.catcher import start_catcher
from app.dev.embedded_redis import EmbeddedRedis
from app.stopping import StopFlag

log = logging.getLogger("onward.launcher")


@dataclass
class Launch:
    """The processes and embedded servers one `make run` owns."""

    settings: Settings
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    redis: EmbeddedRedis | None = None
    catcher: Controller | None = None

    def start_servers(self) -> None:
        """Start embedded Redis and the mail catcher where no real one is configured."""
        settings = self.settings
        self.env.setdefault("DEV_PAGES", "true")
        if settings.redis_url is None:
            self.redis = EmbeddedRedis(settings.instance_dir / "redis")
            self.env["REDIS_URL"] = self.redis.url
        if settings.smtp_url is None:
            outbox = settings.outbox_dir or settings.instance_dir / "outbox"
            port = int(self.env.get("MAIL_CATCHER_PORT") or "1025")
            try:
                self.catcher = start_catcher(outbox, port=port)
            except OSError as error:
                raise RuntimeError(
                    f"the mail catcher cannot listen on 127.0.0.1:{port} ({error.strerror}): "
                    "set MAIL_CATCHER_PORT to a free port, or SMTP_URL to a real relay"
                ) from error
            self.env["SMTP_URL"] = f"smtp://127.0.0.1:{port}"
            self.env["OUTBOX_DIR"] = str(outbox)

    def start_processes(self, port: str) -> None:
        """Start the web app, one worker and the scheduler."""
        python = sys.executable
        commands = {
            "web": [python, "-m", "app.dev.server", "--port", port],
            "worker": [python, "-m", "worker"],
            "scheduler": [python, "-m", "worker.schedule"],
        }
        for name, command in commands.items():
            self.processes[name] = subprocess.Popen(command, env=self.env)

    def stop(self) -> None:
        """Stop every process and server this launch started."""
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for name, process in self.processes.items():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in 15 s; killing it", name)
                process.kill()
                process.wait()
        if self.catcher is not None:
            self.catcher.stop()
        if self.redis is not None:
            self.redis.stop()


def main() -> int:
    """Run everything until Ctrl-C or SIGTERM; exit non-zero if a process dies."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s launcher %(message)s")
    # The mail catcher logs every SMTP command at INFO; the outbox page shows the mail.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        print(f"onward: {error}", file=sys.stderr)
        return 2
    port = os.environ.get("PORT") or "5000"
    try:
        engine = make_engine(settings.database_url)
        try:
            migrate(engine)
        finally:
            engine.dispose()
    except Exception as error:
        print(
            f"onward: cannot prepare the database {settings.database_url!r}: {error}",
            file=sys.stderr,
        )
        return 2
    launch = Launch(settings)
    stopping = StopFlag()
    signal.signal(signal.SIGINT, stopping.handler)
    signal.signal(signal.SIGTERM, stopping.handler)
    exit_code = 0
    try:
        launch.start_servers()
        launch.start_processes(port)
        outbox = " (the local mail catcher)" if launch.catcher is not None else ""
        print(
            f"\nOnward is running.\n"
            f"  Subscribe page:  {settings.base_url}/\n"
            + (f"  Dev outbox:      {settings.base_url}/dev/outbox/{outbox}\n" if outbox else "")
            + f"  Email previews:  {settings.base_url}/dev/emails/\n"
            + f"  Database:        {settings.database_url}\n"
            f"  Redis:           {launch.env['REDIS_URL']}"
            + (f" (embedded, pid {launch.redis.pid})" if launch.redis else "")
            + "\n"
            f"  Step interval:   {os.environ.get('STEP_INTERVAL', '2d')}\n"
            "  Processes:       "
            + " ".join(f"{name}={p.pid}" for name, p in launch.processes.items())
            + "\n"
            "Press Ctrl-C to stop.\n",
            flush=True,
        )
        while not stopping.wait(0.5):
            dead = [name for name, p in launch.processes.items() if p.poll() is not None]
            if dead:
                log.error("%s stopped unexpectedly; shutting everything down", ", ".join(dead))
                exit_code = 1
                break
    except Exception as error:
        log.error("could not start: %s", error)
        exit_code = 1
    finally:
        launch.stop()
        log.info("stopped")
    return exit_code


if __name__ == "__main__":
    raise SystemExit(main())
