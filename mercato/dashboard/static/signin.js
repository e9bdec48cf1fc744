// The sign-in page: checks a token against the API, keeps it in this tab's sessionStorage and
// opens the merchant dashboard (mt_… tokens) or the operator console (the admin token).
import { api, isMerchantToken, saveToken, signOut, takeTokenFromHash, token } from "./common.js";

const form = document.getElementById("signin");
const input = document.getElementById("token");
const error = document.getElementById("error");

function destination(merchant) {
  const page = merchant ? "/app" : "/console";
  const next = new URLSearchParams(location.search).get("next") ?? "";
  // only our own pages: never an address elsewhere
  return next === page || next.startsWith(`${page}?`) ? next : page;
}

async function signIn(value) {
  const merchant = isMerchantToken(value);
  error.textContent = "";
  try {
    await api(merchant ? "/v1/metrics" : "/v1/admin/operations", { bearer: value });
  } catch (failure) {
    sessionStorage.clear();
    error.textContent = [401, 403].includes(failure.status)
      ? `This token was refused: ${failure.message}.`
      : `Could not sign in: ${failure.message}.`;
    input.focus();
    return;
  }
  saveToken(value);
  location.replace(destination(merchant));
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const value = input.value.trim();
  if (value) signIn(value);
});
document.getElementById("forget")?.addEventListener("click", signOut);

takeTokenFromHash();
if (token()) signIn(token());
