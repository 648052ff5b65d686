"use strict";
// Signing in: the password goes to the server once, as JSON; the session comes back as an HTTP-only
// cookie the page never sees.
document.addEventListener("DOMContentLoaded", () => {
  $("signin").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("error").hidden = true;
    $("go").disabled = true;
    try {
      await request("/api/session", {method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({name: $("name").value, password: $("password").value})});
      window.location.assign("/");
    } catch (err) {
      $("error").textContent = err.message;
      $("error").hidden = false;
      $("password").value = "";
    } finally {
      $("go").disabled = false;
    }
  });
});
