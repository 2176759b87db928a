package function

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
)

// completeScript is the complete page's only script; %s stands for the JSON list
// of allowed return origins, fixed when the function starts. It reads the
// fragment and nothing else: the token, its expiry, the user and where to
// go. It clears the fragment from history, stores the session the way
// StreamSpace's UI keeps it (zustand's persist under "streamspace-auth",
// ui/src/store/userStore.ts) and navigates on. A returnUrl in the fragment
// is followed only when it is a same-origin path or on one of those
// origins, so a crafted link cannot make this page an open redirect.
const completeScript = `(function () {
  var origins = %s;
  var msg = document.getElementById("msg");
  var params = new URLSearchParams(window.location.hash.slice(1));
  history.replaceState(null, "", window.location.pathname);
  var token = params.get("token"), expiresAt = params.get("expiresAt"), encoded = params.get("user");
  if (!token || !expiresAt || !encoded) { msg.textContent = "Sign-in failed: nothing to store. Start again."; return; }
  var user;
  try {
    var b64 = encoded.replace(/-/g, "+").replace(/_/g, "/");
    var bin = atob(b64 + "===".slice((b64.length + 3) % 4));
    var bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) { bytes[i] = bin.charCodeAt(i); }
    user = JSON.parse(new TextDecoder().decode(bytes));
  } catch (e) { msg.textContent = "Sign-in failed: the answer was damaged. Start again."; return; }
  var target = params.get("returnUrl") || "/";
  var sameOrigin = /^\/(?![\/\\])[^\\\s]*$/.test(target);
  var allowed = false;
  if (!sameOrigin) {
    try { var u = new URL(target); allowed = (u.protocol === "https:" || u.protocol === "http:") && origins.indexOf(u.origin) >= 0 && !u.username && !u.password; } catch (e) { allowed = false; }
  }
  if (!sameOrigin && !allowed) { target = "/"; }
  localStorage.setItem("streamspace-auth", JSON.stringify({ state: { user: user, token: token, expiresAt: expiresAt, isAuthenticated: true }, version: 0 }));
  msg.textContent = "Signed in.";
  window.location.replace(target);
})();`

// completeAssets renders the page for the allowed return origins besides
// the page's own, and its CSP, which allows the page's one script by its
// hash and nothing else: no other script, no style, no connection, no
// frame, no form, no base URL.
func completeAssets(origins []string) (page []byte, csp string, err error) {
	if origins == nil {
		origins = []string{}
	}
	// json.Marshal escapes <, > and &, so the list cannot end the script.
	list, err := json.Marshal(origins)
	if err != nil {
		return nil, "", err
	}
	script := strings.Replace(completeScript, "%s", string(list), 1)
	sum := sha256.Sum256([]byte(script))
	csp = "default-src 'none'; script-src 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) +
		"'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
	var b strings.Builder
	b.WriteString(`<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="referrer" content="no-referrer">`)
	b.WriteString(`<title>Signing in…</title></head><body><p id="msg">Signing in…</p><script>`)
	b.WriteString(script)
	b.WriteString(`</script></body></html>`)
	return []byte(b.String()), csp, nil
}

// serveComplete writes the complete page with its security headers.
func serveComplete(w http.ResponseWriter, page []byte, csp string) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", csp)
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	w.WriteHeader(http.StatusOK)
	w.Write(page)
}
