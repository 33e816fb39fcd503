// The one place that talks HTTP: builds tenant-scoped URLs, attaches the credential, and turns
// every failure into a NimbusError.

import { resolveConfig, type NimbusOptions, type ResolvedConfig } from "./config.js";
import { NimbusError } from "./errors.js";
import type { CallOptions } from "./types.js";
import { SDK_VERSION } from "./version.js";

export type QueryValue = string | number | boolean | undefined;

export interface RequestSpec {
  method: "GET" | "POST" | "PUT" | "DELETE";
  /** Path under `/v1/tenants/{tenantId}/`, already encoded (use `segment()`). */
  path: string;
  call: CallOptions;
  query?: Record<string, QueryValue>;
  body?: unknown;
  /** How to read a 2xx body. */
  response?: "json" | "text";
}

/** Encodes one path segment (a name or id the caller passed). */
export function segment(value: unknown, what: string): string {
  if (typeof value !== "string" || value === "") {
    throw new NimbusError({
      code: "client.invalid_argument",
      message: `${what} is required and must be a non-empty string`,
      details: { argument: what },
    });
  }
  return encodeURIComponent(value);
}

export class Transport {
  private resolved: Promise<ResolvedConfig> | undefined;

  constructor(private readonly options: NimbusOptions) {}

  /** Discovery runs once; a failed discovery is retried on the next call (the environment may have been fixed). */
  config(): Promise<ResolvedConfig> {
    if (this.resolved === undefined) {
      const attempt = resolveConfig(this.options);
      this.resolved = attempt;
      attempt.catch(() => {
        if (this.resolved === attempt) this.resolved = undefined;
      });
    }
    return this.resolved;
  }

  async tenantFor(call: CallOptions): Promise<string> {
    if (typeof call.tenantId === "string" && call.tenantId !== "") return call.tenantId;
    const config = await this.config();
    if (config.tenantId !== undefined) return config.tenantId;
    throw new NimbusError({
      code: "client.not_configured",
      message:
        "no tenant: pass {tenantId} to new Nimbus() or to this call, or set NIMBUS_TENANT (a credential file supplies one only with its own token)",
      details: { missing: ["tenantId"] },
    });
  }

  async request<T>(spec: RequestSpec): Promise<T> {
    const config = await this.config();
    const tenant = await this.tenantFor(spec.call);
    const url = new URL(`${config.endpoint}/v1/tenants/${encodeURIComponent(tenant)}/${spec.path}`);
    for (const [key, value] of Object.entries(spec.query ?? {})) {
      if (value !== undefined) url.searchParams.set(key, String(value));
    }

    const secret = await config.credential.value();
    const headers: Record<string, string> = {
      accept: spec.response === "text" ? "text/plain, application/json" : "application/json",
      "user-agent": `nimbus-sdk-typescript/${SDK_VERSION}`,
    };
    if (config.credential.kind === "apiKey") headers["x-nimbus-api-key"] = secret;
    else headers["authorization"] = `Bearer ${secret}`;

    const init: RequestInit = { method: spec.method, headers };
    if (spec.body !== undefined) {
      headers["content-type"] = "application/json";
      init.body = JSON.stringify(spec.body);
    }
    if (spec.call.signal !== undefined) init.signal = spec.call.signal;

    const doFetch = this.options.fetch ?? globalThis.fetch;
    const what = `${spec.method} ${url.pathname}${url.search}`;
    let response: Response;
    try {
      response = await doFetch(url, init);
    } catch (err) {
      throw transportError(err, what, config.endpoint, spec.call.signal);
    }

    let text: string;
    try {
      text = await response.text();
    } catch (err) {
      throw transportError(err, what, config.endpoint, spec.call.signal);
    }

    if (!response.ok) throw errorFromResponse(response, text, what);

    if (spec.response === "text") return text as T;
    if (text === "") return undefined as T;
    try {
      return JSON.parse(text) as T;
    } catch (err) {
      throw new NimbusError({
        code: "client.invalid_response",
        message: `${what} answered ${response.status} with a body that is not JSON: ${excerpt(text)}`,
        details: { status: response.status, body: excerpt(text) },
        status: response.status,
        cause: err,
      });
    }
  }
}

function excerpt(text: string): string {
  const oneLine = text.replace(/\s+/g, " ").trim();
  return oneLine.length > 200 ? `${oneLine.slice(0, 200)}…` : oneLine;
}

function transportError(err: unknown, what: string, endpoint: string, signal: AbortSignal | undefined): NimbusError {
  if (signal?.aborted === true) {
    return new NimbusError({
      code: "client.aborted",
      message: `${what} was aborted by the caller's signal`,
      details: { request: what },
      cause: err,
    });
  }
  // Node's fetch reports "fetch failed" and puts the reason (ECONNREFUSED, ENOTFOUND, …) in `cause`.
  const cause = (err as { cause?: { code?: unknown; message?: unknown } } | undefined)?.cause;
  const reason = [
    err instanceof Error ? err.message : String(err),
    typeof cause?.code === "string" ? cause.code : undefined,
    typeof cause?.message === "string" ? cause.message : undefined,
  ]
    .filter((s): s is string => typeof s === "string" && s !== "")
    .join(": ");
  return new NimbusError({
    code: "client.network",
    message: `cannot reach the Nimbus server at ${endpoint} (${what}): ${reason}; check that \`nimbus serve\` is running there and the endpoint is right`,
    details: { endpoint, request: what, ...(typeof cause?.code === "string" ? { cause: cause.code } : {}) },
    cause: err,
  });
}

function errorFromResponse(response: Response, text: string, what: string): NimbusError {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  const error = (body as { error?: unknown } | undefined)?.error;
  if (error !== null && typeof error === "object" && typeof (error as { code?: unknown }).code === "string") {
    const e = error as { code: string; message?: unknown; details?: unknown };
    const details =
      e.details !== null && typeof e.details === "object" && !Array.isArray(e.details)
        ? (e.details as Record<string, unknown>)
        : {};
    return new NimbusError({
      code: e.code,
      message: typeof e.message === "string" && e.message !== "" ? e.message : `${what} failed with ${e.code}`,
      details,
      status: response.status,
    });
  }
  return new NimbusError({
    code: "client.invalid_response",
    message: `${what} answered ${response.status} ${response.statusText} without a Nimbus error body: ${excerpt(text) || "(empty body)"}`,
    details: { status: response.status, body: excerpt(text) },
    status: response.status,
  });
}
