import { NimbusError } from "./errors.js";
import { segment, type Transport } from "./http.js";
import { DEFAULT_WAIT_INTERVAL_MS, DEFAULT_WAIT_TIMEOUT_MS, describeConditions, positive, sleep } from "./services.js";
import type {
  CallOptions,
  CreateSandboxRequest,
  ListResponse,
  ListSandboxesRequest,
  Sandbox,
  SandboxIdRequest,
  SandboxStatus,
  SandboxWaitTarget,
  WaitSandboxRequest,
} from "./types.js";

const WAIT_TARGETS: readonly SandboxWaitTarget[] = ["ready", "stopped"];

/** One line describing a sandbox's status, for wait errors. */
function describe(status: SandboxStatus | undefined): string {
  if (status === undefined || status === null) return "(no status reported)";
  const exit = status.exitCode === undefined || status.exitCode === null ? "" : ` exitCode=${status.exitCode}`;
  const conditions = describeConditions(status.conditions);
  return `lifecycleState=${status.lifecycleState}${exit}${conditions === "" ? "" : ` ${conditions}`}`;
}

function call(req: CallOptions): CallOptions {
  return { tenantId: req.tenantId, signal: req.signal };
}

/** Standalone sandboxes: isolated environments addressed by id for their whole life. */
export class Sandboxes {
  constructor(private readonly http: Transport) {}

  /** `POST /sandboxes` body `{profile, spec, labels?}` → 201. */
  async create(req: CreateSandboxRequest): Promise<Sandbox> {
    return this.http.request<Sandbox>({
      method: "POST",
      path: "sandboxes",
      call: call(req),
      body: { profile: req.profile, spec: req.spec, labels: req.labels },
    });
  }

  /** `GET /sandboxes/{id}`. Launch inputs come back redacted. */
  async get(req: SandboxIdRequest): Promise<Sandbox> {
    return this.http.request<Sandbox>({ method: "GET", path: `sandboxes/${segment(req?.id, "id")}`, call: call(req) });
  }

  /** `GET /sandboxes?labelKey=&labelValue=&state=&limit=&pageToken=`. */
  async list(req: ListSandboxesRequest = {}): Promise<ListResponse<Sandbox>> {
    return this.http.request<ListResponse<Sandbox>>({
      method: "GET",
      path: "sandboxes",
      call: call(req),
      query: {
        labelKey: req.labelKey,
        labelValue: req.labelValue,
        state: req.state,
        limit: req.limit,
        // An empty token (what the last page returns) means "from the start".
        pageToken: req.pageToken === "" ? undefined : req.pageToken,
      },
    });
  }

  /** Every matching sandbox, following `nextPageToken` until the last page. */
  async *listAll(req: ListSandboxesRequest = {}): AsyncGenerator<Sandbox, void, undefined> {
    let pageToken = req.pageToken;
    do {
      const page = await this.list({ ...req, pageToken });
      yield* page.items;
      pageToken = page.metadata?.nextPageToken;
    } while (pageToken !== undefined && pageToken !== "");
  }

  /** `POST /sandboxes/{id}/stop` → 202 with the object. */
  async stop(req: SandboxIdRequest): Promise<Sandbox> {
    return this.http.request<Sandbox>({
      method: "POST",
      path: `sandboxes/${segment(req?.id, "id")}/stop`,
      call: call(req),
    });
  }

  /** `DELETE /sandboxes/{id}` → 200 with the final object. */
  async delete(req: SandboxIdRequest): Promise<Sandbox> {
    return this.http.request<Sandbox>({
      method: "DELETE",
      path: `sandboxes/${segment(req?.id, "id")}`,
      call: call(req),
    });
  }

  /**
   * Polls `GET /sandboxes/{id}` every `intervalMs` (default 250) until the sandbox is `until`
   * (ready: lifecycleState "ready"; stopped: "stopped" or "failed"). Waiting for `ready` on a
   * sandbox that has ended throws `client.condition_unreachable` at once (an ended sandbox
   * never runs again); the deadline (`timeoutMs`, default 30 000) throws
   * `client.deadline_exceeded`. Both carry the last observed status.
   */
  async wait(req: WaitSandboxRequest): Promise<Sandbox> {
    const id = segment(req?.id, "id");
    if (!WAIT_TARGETS.includes(req.until)) {
      throw new NimbusError({
        code: "client.invalid_argument",
        message: `until must be one of ${WAIT_TARGETS.join(", ")}; got ${String(req.until)}`,
        details: { argument: "until", value: String(req.until) },
      });
    }
    const timeoutMs = positive(req.timeoutMs, DEFAULT_WAIT_TIMEOUT_MS, "timeoutMs");
    const intervalMs = positive(req.intervalMs, DEFAULT_WAIT_INTERVAL_MS, "intervalMs");
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const sandbox = await this.get({ id, tenantId: req.tenantId, signal: req.signal });
      const state = sandbox.status?.lifecycleState;
      const ended = state === "stopped" || state === "failed";
      if (req.until === "ready" ? state === "ready" : ended) return sandbox;
      const details = { id, until: req.until, timeoutMs, lastStatus: sandbox.status };
      if (req.until === "ready" && ended) {
        throw new NimbusError({
          code: "client.condition_unreachable",
          message: `sandbox ${id} will not become ready: it has ended; last observed status: ${describe(sandbox.status)}`,
          details,
        });
      }
      const remaining = deadline - Date.now();
      if (remaining <= 0) {
        throw new NimbusError({
          code: "client.deadline_exceeded",
          message: `sandbox ${id} did not become ${req.until} within ${timeoutMs} ms; last observed status: ${describe(sandbox.status)}`,
          details,
        });
      }
      try {
        await sleep(Math.min(intervalMs, remaining), req.signal);
      } catch (err) {
        throw new NimbusError({
          code: "client.aborted",
          message: `waiting for sandbox ${id} to become ${req.until} was aborted by the caller's signal`,
          details: { id, until: req.until },
          cause: err,
        });
      }
    }
  }

  /** `GET /sandboxes/{id}/logs`: the process's captured output so far, as text. */
  async logs(req: SandboxIdRequest): Promise<string> {
    return this.http.request<string>({
      method: "GET",
      path: `sandboxes/${segment(req?.id, "id")}/logs`,
      call: call(req),
      response: "text",
    });
  }
}
