// First-account setup: the token is in the URL fragment (never sent to the server by the
// browser); it goes in the JSON body of one POST. No inline script: the CSP forbids it.
window.addEventListener("DOMContentLoaded", function () {
  var form = document.getElementById("setup-form");
  var result = document.getElementById("setup-result");
  var token = new URLSearchParams(window.location.hash.slice(1)).get("token") || "";
  function say(text, isError) {
    result.textContent = text;
    result.className = isError ? "error" : "ok";
  }
  if (!token) {
    say("This page needs the setup link Keel printed when it started.", true);
  }
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var data = new FormData(form);
    if (data.get("password") !== data.get("confirm")) {
      say("The two passwords differ.", true);
      document.getElementById("confirm").focus();
      return;
    }
    fetch("/api/v1/auth/setup", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        token: token,
        email: data.get("email"),
        display_name: data.get("display_name") || null,
        password: data.get("password"),
      }),
    }).then(function (response) {
      return response.json().then(function (body) {
        if (response.ok) {
          history.replaceState(null, "", "/setup");
          say("Account " + body.user.email + " created; you are signed in.", false);
          form.hidden = true;
        } else {
          var reasons = (body.errors || []).map(function (e) { return e.detail; }).join(" ");
          say((body.detail || body.title) + (reasons ? " " + reasons : ""), true);
        }
      });
    }).catch(function () {
      say("Keel could not be reached.", true);
    });
  });
});
