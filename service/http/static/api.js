// The REST task API as the page calls it: paths relative to the page, the API key (when one is
// given) as a Bearer token, and every refusal turned into an ApiError with the server's message.

export class ApiError extends Error {
  constructor(status, statusText, message) {
    super(message);
    this.status = status;
    this.statusText = statusText;
  }
}

let apiKey = "";

export function setApiKey(key) {
  apiKey = key.trim();
}

export async function call(path, { method = "GET", body, type, accept = "application/json" } = {}) {
  const headers = { Accept: accept };
  if (type) headers["Content-Type"] = type;
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  let response;
  try {
    response = await fetch(path, { method, body, headers });
  } catch (error) {
    throw new Error(`cannot reach the server: ${error.message}`);
  }
  if (!response.ok) {
    throw new ApiError(response.status, response.statusText, await errorMessage(response));
  }
  return response;
}

export function postJson(path, value, accept = "application/json") {
  return call(path, { method: "POST", body: JSON.stringify(value), type: "application/json",
                      accept });
}

// Every error of the server is {"error": "..."}; anything else (a proxy's page) is shown as is.
async function errorMessage(response) {
  const text = await response.text();
  try {
    return JSON.parse(text).error ?? text;
  } catch {
    return text;
  }
}

export function modelPath(model, action) {
  return `v1/models/${encodeURIComponent(model)}/${action}`;
}
