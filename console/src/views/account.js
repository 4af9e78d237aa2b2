// Your account: replace a one-time password, set up an authenticator (TOTP).

import { html, nothing } from "lit-html";
import { get, post } from "../api.js";

const s = { setup: null, message: "", error: "" };
let appRef = null;

async function reloadMe() {
  await appRef.signedIn(await get("/auth/me"));
}

export function accountView(app) {
  appRef = app;
  const me = app.me;
  const changePassword = async (ev) => {
    ev.preventDefault();
    const d = Object.fromEntries(new FormData(ev.target).entries());
    s.error = "";
    if (d.new !== d.repeat) {
      s.error = "The two new passwords differ.";
      return app.refresh();
    }
    try {
      await post("/auth/password", { current: d.current, new: d.new });
      s.message = "Password changed.";
      ev.target.reset();
      await reloadMe();
    } catch (err) {
      s.error = err.message;
      app.refresh();
    }
  };
  // Replacing an active authenticator needs the password and a current code from it
  // (the relay refuses it otherwise): a session left open is not enough.
  const begin = async (ev) => {
    s.error = "";
    let proof = {};
    if (ev && ev.type === "submit") {
      ev.preventDefault();
      const d = Object.fromEntries(new FormData(ev.target).entries());
      proof = { password: d.password, code: String(d.code || "").trim() };
    }
    try {
      s.setup = await post("/auth/totp/begin", proof);
    } catch (err) {
      s.error = err.message;
    }
    app.refresh();
  };
  const confirmCode = async (ev) => {
    ev.preventDefault();
    const code = String(new FormData(ev.target).get("code") || "").trim();
    try {
      await post("/auth/totp/confirm", { code });
      s.setup = null;
      s.message = "Authenticator set up: you will be asked for a code at every sign-in.";
      await reloadMe();
    } catch (err) {
      s.error = err.message;
      app.refresh();
    }
  };
  const qr = s.setup ? `data:image/svg+xml;base64,${btoa(s.setup.qr_svg)}` : "";
  return html`<section aria-labelledby="account-title" class="account">
    <h1 id="account-title">Your account</h1>
    ${s.message ? html`<p class="notice" role="status">${s.message}</p>` : nothing}
    ${s.error ? html`<p class="error" role="alert">${s.error}</p>` : nothing}
    ${me.user.must_change_password ? html`<p class="notice">You signed in with a one-time
      password: choose your own password to continue.</p>` : nothing}
    ${!me.user.must_change_password && me.totp_enrolment_required ? html`<p class="notice">Your
      administrator requires a second factor: set up an authenticator to continue.</p>` : nothing}
    <div class="grid">
      <form class="card stack" @submit=${changePassword} aria-label="Change password">
        <h2>Password</h2>
        <label>Current password <input name="current" type="password" autocomplete="current-password" required></label>
        <label>New password <small>(at least 12 characters)</small>
          <input name="new" type="password" autocomplete="new-password" minlength="12" required></label>
        <label>New password again <input name="repeat" type="password" autocomplete="new-password" minlength="12" required></label>
        <button type="submit">Change password</button>
      </form>
      <div class="card stack">
        <h2>Authenticator (TOTP)</h2>
        ${me.user.totp_enabled ? html`<p>An authenticator is set up for your account.</p>` : nothing}
        ${me.user.must_change_password ? html`<p class="muted">Change your password first.</p>`
          : s.setup ? html`
          <p>Scan this code with your authenticator app, or enter the key by hand.</p>
          <img class="qr" src=${qr} alt="QR code for your authenticator" width="200" height="200">
          <p>Key: <code class="secret" id="totp-secret">${s.setup.secret}</code></p>
          <form class="inline" @submit=${confirmCode}>
            <label>Code from the app <input name="code" inputmode="numeric" pattern="[0-9]{6}" maxlength="6" required autocomplete="one-time-code"></label>
            <button type="submit">Confirm</button></form>`
          : me.user.totp_enabled ? html`
          <form class="stack" @submit=${begin} aria-label="Replace authenticator">
            <label>Password <input name="password" type="password" autocomplete="current-password" required></label>
            <label>Code from the current app <input name="code" inputmode="numeric" pattern="[0-9]{6}" maxlength="6" required autocomplete="one-time-code"></label>
            <button type="submit">Replace authenticator</button></form>`
          : html`<button type="button" @click=${begin}>Set up an authenticator</button>`}
      </div>
    </div>
  </section>`;
}
