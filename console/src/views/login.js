import { html, nothing } from "lit-html";
import { get, post } from "../api.js";

let error = "";
let needTotp = false;
let busy = false;

export function loginView(app) {
  const submit = async (ev) => {
    ev.preventDefault();
    const form = new FormData(ev.target);
    busy = true;
    error = "";
    app.refresh();
    try {
      const body = {
        username: String(form.get("username") || ""),
        password: String(form.get("password") || ""),
      };
      const code = String(form.get("totp") || "").trim();
      if (code) body.totp = code;
      await post("/auth/login", body);
      needTotp = false;
      await app.signedIn(await get("/auth/me"));
    } catch (err) {
      if (err.code === "totp_required") {
        needTotp = true;
        error = "Enter the 6-digit code from your authenticator app.";
      } else {
        error = err.message;
      }
    } finally {
      busy = false;
      app.refresh();
    }
  };
  return html`<section class="login card" aria-labelledby="login-title">
    <h1 id="login-title">Sign in to Backline</h1>
    ${app.notice ? html`<p class="notice" role="status">${app.notice}</p>` : nothing}
    <form @submit=${submit}>
      <label>Username <input name="username" autocomplete="username" required autofocus></label>
      <label>Password <input name="password" type="password" autocomplete="current-password"
        required></label>
      <label>Authenticator code ${needTotp ? nothing : html`<small>(if you set one up)</small>`}
        <input name="totp" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}"
          maxlength="6" ?required=${needTotp}></label>
      ${error ? html`<p class="error" role="alert">${error}</p>` : nothing}
      <button type="submit" ?disabled=${busy}>${busy ? "Signing in…" : "Sign in"}</button>
    </form>
  </section>`;
}
