// "Check your inbox": keeps the resend button off until the cooldown the server enforces
// is over, and says when it will be ready. Without JavaScript the button stays usable
// and the server answers an early press with how long to wait.
(function () {
  "use strict";
  var note = document.getElementById("resend-when");
  if (!note) {
    return;
  }
  var button = document.querySelector('button[aria-describedby="resend-when"]');
  var ready = Date.now() + Number(note.getAttribute("data-wait") || 0) * 1000;
  function update() {
    var left = Math.ceil((ready - Date.now()) / 60000);
    if (left <= 0) {
      note.textContent = "Still nothing? We can send it again.";
      button.disabled = false;
      return;
    }
    note.textContent = "Still nothing? You can ask for another email in " +
      (left === 1 ? "a minute." : left + " minutes.");
    button.disabled = true;
    window.setTimeout(update, 5000);
  }
  update();
})();
