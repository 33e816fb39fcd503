import { NimbusError } from "./errors.js";
import { segment, type Transport } from "./http.js";
import type {
  CallOptions,
  Condition,
  CreateServiceRequest,
  DeleteServiceRequest,
  GetServiceRequest,
  ListResponse,
  ListServicesRequest,
  RestartServiceRequest,
  Service,
  ServiceStatus,
  ServiceWaitTarget,
  StartServiceRequest,
  StopServiceRequest,
  UpdateServiceRequest,
  WaitServiceRequest,
} from "./types.js";

export const DEFAULT_WAIT_TIMEOUT_MS = 30_000;
export const DEFAULT_WAIT_INTERVAL_MS = 250;

const WAIT_TARGETS: readonly ServiceWaitTarget[] = ["ready", "healthy", "stopped"];

function invalid(message: string, details: Record<string, unknown>): NimbusError {
  return new NimbusError({ code: "client.invalid_argument", message, details });
}

function call(req: CallOptions): CallOptions {
  return { tenantId: req.tenantId, signal: req.signal };
}

function generation(value: unknown): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 1) {
    const why = typeof value === "number" && Number.isSafeInteger(value) ? ` (generations start at 1; got ${value})` : "";
    throw invalid(`ifMatchGeneration is required: pass the metadata.generation you last read${why}`, {
      argument: "ifMatchGeneration",
      value: String(value),
    });
  }
  return value;
}

/** An optional `ifMatchResourceVersion`: absent, or the string `metadata.resourceVersion` holds. */
function resourceVersion(value: unknown): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "string" || value === "") {
    throw invalid("ifMatchResourceVersion must be the metadata.resourceVersion you last read (a string)", {
      argument: "ifMatchResourceVersion",
      value: String(value),
    });
  }
  return value;
}

/** A poll option: `fallback` when absent, else a positive number of milliseconds. */
export function positive(value: number | undefined, fallback: number, what: string): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isFinite(value) || value <= 0) {
    throw invalid(`${what} must be a positive number of milliseconds`, { argument: what, value: String(value) });
  }
  return value;
}

/** Whether a service has reached what `wait` polls for. */
export function serviceReached(service: Service, until: ServiceWaitTarget): boolean {
  const status = service.status;
  if (status === undefined || status === null) return false;
  // A status computed for an older spec says nothing about the current one.
  if (typeof status.observedGeneration === "number" && status.observedGeneration < service.metadata.generation) {
    return false;
  }
  switch (until) {
    case "ready":
      return status.readiness === "ready";
    case "healthy":
      return status.health === "healthy";
    case "stopped":
      // `declared` is a definition with nothing launched: nothing is running, so it counts as
      // stopped. Nimbus never runs an external service (its state is what its health checks
      // see), so one is as stopped as it gets at once, as the server's `waitUntil` treats it.
      return (
        status.lifecycleState === "stopped" ||
        status.lifecycleState === "declared" ||
        service.spec?.backend?.kind === "external"
      );
  }
}

/** One line describing a status, for deadline messages. */
export function describeServiceStatus(status: ServiceStatus | undefined, generation?: number): string {
  if (status === undefined || status === null) return "(no status reported)";
  const parts = [
    `lifecycleState=${status.lifecycleState}`,
    `readiness=${status.readiness}`,
    `health=${status.health}`,
  ];
  if (typeof status.observedGeneration === "number") {
    parts.push(
      generation === undefined
        ? `observedGeneration=${status.observedGeneration}`
        : `observedGeneration=${status.observedGeneration} (generation ${generation})`,
    );
  }
  const conditions = describeConditions(status.conditions);
  if (conditions !== "") parts.push(conditions);
  return parts.join(" ");
}

/** `conditions: Ready=False (Reason: message), …`, or "" without any; for wait messages. */
export function describeConditions(conditions: readonly Condition[] | undefined): string {
  const each = (conditions ?? []).map((c) => {
    const why = [c.reason, c.message].filter((s) => typeof s === "string" && s !== "").join(": ");
    return `${c.type}=${c.status}${why === "" ? "" : ` (${why})`}`;
  });
  return each.length > 0 ? `conditions: ${each.join(", ")}` : "";
}

/** Waits `ms`, or rejects with the signal's reason when it fires first. */
export function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted === true) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Named services: definitions the server runs (or reaches) and supervises. */
export class Services {
  constructor(private readonly http: Transport) {}

  /** `POST /services` → 201. */
  async create(req: CreateServiceRequest): Promise<Service> {
    segment(req?.name, "name");
    return this.http.request<Service>({
      method: "POST",
      path: "services",
      call: call(req),
      body: { name: req.name, backend: req.backend, labels: req.labels },
    });
  }

  /** `GET /services/{name}`. */
  async get(req: GetServiceRequest): Promise<Service> {
    return this.http.request<Service>({
      method: "GET",
      path: `services/${segment(req?.name, "name")}`,
      call: call(req),
    });
  }

  /** `GET /services?limit=&pageToken=`. */
  async list(req: ListServicesRequest = {}): Promise<ListResponse<Service>> {
    return this.http.request<ListResponse<Service>>({
      method: "GET",
      path: "services",
      call: call(req),
      query: {
        limit: req.limit,
        // An empty token (what the last page returns) means "from the start".
        pageToken: req.pageToken === "" ? undefined : req.pageToken,
      },
    });
  }

  /** Every service, following `nextPageToken` until the last page. */
  async *listAll(req: ListServicesRequest = {}): AsyncGenerator<Service, void, undefined> {
    let pageToken = req.pageToken;
    do {
      const page = await this.list({ ...req, pageToken });
      yield* page.items;
      pageToken = page.metadata?.nextPageToken;
    } while (pageToken !== undefined && pageToken !== "");
  }

  /** `PUT /services/{name}` with `ifMatchGeneration`; a stale generation fails with `op.precondition_failed`. */
  async update(req: UpdateServiceRequest): Promise<Service> {
    const path = `services/${segment(req?.name, "name")}`;
    return this.http.request<Service>({
      method: "PUT",
      path,
      call: call(req),
      body: {
        backend: req.backend,
        labels: req.labels,
        ifMatchGeneration: generation(req.ifMatchGeneration),
        ifMatchResourceVersion: resourceVersion(req.ifMatchResourceVersion),
      },
    });
  }

  /** `DELETE /services/{name}?ifMatchGeneration=N[&force=true]` → the final object. */
  async delete(req: DeleteServiceRequest): Promise<Service> {
    const path = `services/${segment(req?.name, "name")}`;
    return this.http.request<Service>({
      method: "DELETE",
      path,
      call: call(req),
      query: { ifMatchGeneration: generation(req.ifMatchGeneration), force: req.force === true ? true : undefined },
    });
  }

  /** `POST /services/{name}/start` → 202; with `waitUntil`, polls until ready or healthy. */
  async start(req: StartServiceRequest): Promise<Service> {
    return this.verb("start", req, req?.waitUntil, ["ready", "healthy"]);
  }

  /** `POST /services/{name}/restart` → 202; with `waitUntil`, polls until ready or healthy. */
  async restart(req: RestartServiceRequest): Promise<Service> {
    return this.verb("restart", req, req?.waitUntil, ["ready", "healthy"]);
  }

  /** `POST /services/{name}/stop` → 202; with `waitUntil: "stopped"`, polls until stopped. */
  async stop(req: StopServiceRequest): Promise<Service> {
    return this.verb("stop", req, req?.waitUntil, ["stopped"]);
  }

  /**
   * Polls `GET /services/{name}` every `intervalMs` (default 250) until the service is `until`
   * (ready: readiness "ready"; healthy: health "healthy"; stopped: lifecycleState "stopped" or
   * "declared"). Throws `client.deadline_exceeded` after `timeoutMs` (default 30 000) with the
   * last observed status in the message and in `details.lastStatus`.
   */
  async wait(req: WaitServiceRequest): Promise<Service> {
    const name = req?.name;
    segment(name, "name");
    if (!WAIT_TARGETS.includes(req.until)) {
      throw invalid(`until must be one of ${WAIT_TARGETS.join(", ")}; got ${String(req.until)}`, {
        argument: "until",
        value: String(req.until),
      });
    }
    const timeoutMs = positive(req.timeoutMs, DEFAULT_WAIT_TIMEOUT_MS, "timeoutMs");
    const intervalMs = positive(req.intervalMs, DEFAULT_WAIT_INTERVAL_MS, "intervalMs");
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const service = await this.get({ name, tenantId: req.tenantId, signal: req.signal });
      if (serviceReached(service, req.until)) return service;
      const remaining = deadline - Date.now();
      if (remaining <= 0) {
        const tenant = service.metadata?.tenantId ?? req.tenantId;
        throw new NimbusError({
          code: "client.deadline_exceeded",
          message:
            `service "${name}"${tenant === undefined ? "" : ` in tenant "${tenant}"`} did not become ${req.until} ` +
            `within ${timeoutMs} ms; last observed status: ${describeServiceStatus(service.status, service.metadata?.generation)}`,
          details: { name, until: req.until, timeoutMs, lastStatus: service.status },
        });
      }
      try {
        await sleep(Math.min(intervalMs, remaining), req.signal);
      } catch (err) {
        throw new NimbusError({
          code: "client.aborted",
          message: `waiting for service "${name}" to become ${req.until} was aborted by the caller's signal`,
          details: { name, until: req.until },
          cause: err,
        });
      }
    }
  }

  private async verb(
    verb: "start" | "stop" | "restart",
    req: StartServiceRequest | StopServiceRequest,
    waitUntil: ServiceWaitTarget | undefined,
    allowed: readonly ServiceWaitTarget[],
  ): Promise<Service> {
    const path = `services/${segment(req?.name, "name")}/${verb}`;
    if (waitUntil !== undefined && !allowed.includes(waitUntil)) {
      throw invalid(`${verb} accepts waitUntil ${allowed.map((a) => `"${a}"`).join(" or ")}; got ${String(waitUntil)}`, {
        argument: "waitUntil",
        value: String(waitUntil),
      });
    }
    // Validate the poll options before the request, so a bad option does not leave a half-done call.
    positive(req.timeoutMs, DEFAULT_WAIT_TIMEOUT_MS, "timeoutMs");
    positive(req.intervalMs, DEFAULT_WAIT_INTERVAL_MS, "intervalMs");
    const accepted = await this.http.request<Service>({ method: "POST", path, call: call(req) });
    if (waitUntil === undefined) return accepted;
    return this.wait({
      name: req.name,
      until: waitUntil,
      tenantId: req.tenantId,
      signal: req.signal,
      timeoutMs: req.timeoutMs,
      intervalMs: req.intervalMs,
    });
  }
}
