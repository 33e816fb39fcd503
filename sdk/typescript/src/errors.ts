import type { ClientErrorCode, ServerErrorCode } from "./types.js";

export interface NimbusErrorInit {
  code: string;
  message: string;
  details?: Record<string, unknown>;
  /** HTTP status of the response; absent when no response was received. */
  status?: number;
  cause?: unknown;
}

/**
 * The one error type the SDK throws for failed calls.
 *
 * Server errors carry the server's stable `code`, `message`, `details` and the HTTP `status`
 * (`err.code === "op.precondition_failed"`). Failures with no server answer use a `client.*`
 * code and have no `status`: `client.network`, `client.not_configured`,
 * `client.invalid_argument`, `client.invalid_response`, `client.deadline_exceeded`,
 * `client.aborted`.
 */
export class NimbusError extends Error {
  /** Stable error code, e.g. `op.precondition_failed` or `client.network`. */
  readonly code: ServerErrorCode | ClientErrorCode | (string & {});
  /** Structured details: every value the message mentions (from the server, or the SDK). */
  readonly details: Record<string, unknown>;
  /** HTTP status, or `undefined` when the error did not come from an HTTP response. */
  readonly status: number | undefined;

  constructor(init: NimbusErrorInit) {
    super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = "NimbusError";
    this.code = init.code;
    this.details = init.details ?? {};
    this.status = init.status;
  }
}

/** True when `err` is a NimbusError, optionally with the given code. */
export function isNimbusError(err: unknown, code?: string): err is NimbusError {
  return err instanceof NimbusError && (code === undefined || err.code === code);
}
