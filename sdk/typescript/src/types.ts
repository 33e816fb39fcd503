// Wire types of the Nimbus HTTP API (v1), as fixed by the HTTP contract. Field names are the
// JSON field names; nothing here is renamed, so a request body is exactly what the server parses.

/** Labels: string keys to string values, the filtering handle for resources. */
export type Labels = Record<string, string>;

/** An RFC 3339 timestamp as the server writes it. */
export type Timestamp = string;

// ---------------------------------------------------------------------------------------------
// Common resource shape
// ---------------------------------------------------------------------------------------------

/** Metadata every resource carries. */
export interface ResourceMetadata {
  tenantId: string;
  /** Increases only when `spec` changes. Pass it back as `ifMatchGeneration`. */
  generation: number;
  /** Opaque; changes on every write. */
  resourceVersion: string;
  createdAt: Timestamp;
  updatedAt: Timestamp;
  labels: Labels;
}

export type ConditionStatus = "True" | "False" | "Unknown";

/** A Kubernetes-style condition. */
export interface Condition {
  /** e.g. "Ready", "Healthy". */
  type: string;
  status: ConditionStatus;
  /** CamelCase machine-readable reason. */
  reason: string;
  message: string;
  lastTransitionTime: Timestamp;
  observedGeneration: number;
}

/** One page of a list call. `nextPageToken` is absent or empty on the last page. */
export interface ListResponse<T> {
  items: T[];
  metadata: ListMetadata;
}

export interface ListMetadata {
  nextPageToken?: string | undefined;
}

/** Options every call accepts. */
export interface CallOptions {
  /** Tenant for this call; defaults to the client's `tenantId`. */
  tenantId?: string | undefined;
  /** Aborts the call (and, for waits, the polling). */
  signal?: AbortSignal | undefined;
}

/** Paging options for list calls. */
export interface PageOptions {
  limit?: number | undefined;
  pageToken?: string | undefined;
}

// ---------------------------------------------------------------------------------------------
// Sandbox spec (shared by standalone sandboxes and sandbox-backed services)
// ---------------------------------------------------------------------------------------------

/** Isolation mechanism. `krun` currently fails closed for process execution. */
export type SandboxBackendKind = "container" | "krun";

/** Sandbox profile chosen at create time. */
export type SandboxProfile = "worker" | "desktop";

/** A sandbox created directly by a caller. */
export interface StandaloneOwner {
  kind: "standalone";
  displayName?: string | undefined;
}

/** A sandbox launched by the service manager on behalf of a service. */
export interface ServiceOwner {
  kind: "service";
  serviceName: string;
}

export type SandboxOwner = StandaloneOwner | ServiceOwner;
export type SandboxOwnerKind = SandboxOwner["kind"];

/** OCI image material obtained from a registry by reference. */
export interface ImageReferenceSource {
  kind: "reference";
  reference: string;
}

/** OCI image material obtained by building a Dockerfile. */
export interface ImageBuildSource {
  kind: "build";
  dockerfile: string;
  context: string;
}

export type ImageSource = ImageReferenceSource | ImageBuildSource;
export type ImageSourceKind = ImageSource["kind"];

export interface OciImageRoot {
  kind: "oci_image";
  source: ImageSource;
}

/** A prepared root filesystem on the host. */
export interface RootfsRoot {
  kind: "rootfs";
  path: string;
}

export type SandboxRoot = OciImageRoot | RootfsRoot;
export type SandboxRootKind = SandboxRoot["kind"];

/** The process to run, as sent in a request. */
export interface ProcessSpec {
  argv: string[];
  environment?: Record<string, string> | undefined;
  workingDir?: string | undefined;
  user?: string | undefined;
}

/** How launch inputs come back in responses: their values are never readable back. */
export interface Redacted {
  redacted: true;
  valueCount: number;
}

/** The process as returned by the server: argv and environment redacted. */
export interface ProcessView {
  argv: Redacted;
  environment: Redacted;
  workingDir?: string | undefined;
  user?: string | undefined;
}

export interface EgressRule {
  /** An IP address or CIDR block, e.g. "10.213.0.2/32". */
  cidr: string;
  /** Empty or absent means every port. */
  ports?: number[] | undefined;
}

/** Outbound network policy; everything not allowed is denied. */
export interface NetworkPolicy {
  egress?: {
    /** Only "deny" exists: egress is deny-by-default and widened by `allow` rules. */
    default?: "deny" | undefined;
    allow?: EgressRule[] | undefined;
  };
}

export interface ResourceLimits {
  memoryMb?: number | undefined;
  pids?: number | undefined;
  cpus?: number | undefined;
}

/** A sandbox spec as sent in a request. `owner` is generic so service backends can require a service owner. */
export interface SandboxSpec<Owner extends SandboxOwner = SandboxOwner> {
  owner: Owner;
  /** `"container"` (the process-capable default) when left out. */
  backend?: SandboxBackendKind | undefined;
  root: SandboxRoot;
  process: ProcessSpec;
  network?: NetworkPolicy | undefined;
  resources?: ResourceLimits | undefined;
  /** Opt in to a workload identity token in the sandbox's environment. */
  workloadIdentity?: boolean | undefined;
}

/** A sandbox spec as returned by the server (launch inputs redacted; the backend always set). */
export interface SandboxSpecView<Owner extends SandboxOwner = SandboxOwner>
  extends Omit<SandboxSpec<Owner>, "process" | "backend"> {
  backend: SandboxBackendKind;
  process: ProcessView;
}

// ---------------------------------------------------------------------------------------------
// Services
// ---------------------------------------------------------------------------------------------

export type BuiltInProvider = "loadBalancer" | "serviceDiscovery" | "browser" | "modelGateway";

/** A service the server runs in a sandbox it launches and supervises. */
export interface SandboxServiceBackend {
  kind: "sandbox";
  /** `owner` must be `{kind: "service", serviceName: <this service's name>}`. */
  sandbox: SandboxSpec<ServiceOwner>;
}

/** A built-in provider implemented by the server. */
export interface BuiltInServiceBackend {
  kind: "builtIn";
  provider: BuiltInProvider;
}

export interface ExternalEndpoint {
  url: string;
}

/** How Nimbus authenticates to an external endpoint. Default `{kind: "none"}`. */
export interface NoExternalAuth {
  kind: "none";
}
/** Health checks send `Authorization: Bearer <token>`. The token never comes back in responses. */
export interface BearerExternalAuth {
  kind: "bearer";
  token: string;
}
export type ExternalAuth = NoExternalAuth | BearerExternalAuth;
export type ExternalAuthKind = ExternalAuth["kind"];

/** An external auth as returned by the server: the bearer token is redacted. */
export type ExternalAuthView = NoExternalAuth | { kind: "bearer"; token: { redacted: true } };

/** An inclusive range of HTTP status codes. */
export interface StatusRange {
  min: number;
  max: number;
}

/** HTTP GET of `path` (default "/") on the endpoint; healthy when the status is within `expectStatus`. */
export interface HttpHealthProbe {
  kind: "http";
  path?: string | undefined;
  expectStatus?: StatusRange | undefined;
  intervalSeconds?: number | undefined;
  timeoutMs?: number | undefined;
}

/** A TCP connect to the endpoint's host and port. */
export interface TcpHealthProbe {
  kind: "tcp";
  intervalSeconds?: number | undefined;
  timeoutMs?: number | undefined;
}

/** Not checked; health stays `unknown`. The default. */
export interface NoHealthProbe {
  kind: "none";
}

export type HealthProbe = HttpHealthProbe | TcpHealthProbe | NoHealthProbe;
export type HealthProbeKind = HealthProbe["kind"];

/** An external endpoint Nimbus health-checks but does not run. */
export interface ExternalServiceBackend {
  kind: "external";
  endpoint: ExternalEndpoint;
  /** Default `{kind: "none"}`. */
  auth?: ExternalAuth | undefined;
  /** Default `{kind: "none"}`. */
  health?: HealthProbe | undefined;
}

export type ServiceBackend = SandboxServiceBackend | BuiltInServiceBackend | ExternalServiceBackend;
export type ServiceBackendKind = ServiceBackend["kind"];

/** A service backend as returned by the server (an embedded sandbox spec has its launch inputs redacted). */
export type ServiceBackendView =
  | { kind: "sandbox"; sandbox: SandboxSpecView<ServiceOwner> }
  | BuiltInServiceBackend
  | { kind: "external"; endpoint: ExternalEndpoint; auth: ExternalAuthView; health: HealthProbe };

/**
 * `declared`: a definition that is not launched (built-in services; external services without a
 * health check, or not checked yet). An external service with a health check is `running` while
 * its checks pass and `failed` while they fail.
 */
export type ServiceLifecycleState = "declared" | "stopped" | "starting" | "running" | "stopping" | "failed";
export type Readiness = "ready" | "notReady";
export type Health = "healthy" | "unhealthy" | "unknown";

export interface ServiceMetadata extends ResourceMetadata {
  name: string;
  /** Distinguishes this service from an earlier one of the same name. */
  id: string;
}

export interface ServiceSpec {
  backend: ServiceBackendView;
}

/** What start/stop/restart last asked for. */
export type DesiredRunState = "running" | "stopped";

export interface ServiceStatus {
  lifecycleState: ServiceLifecycleState;
  readiness: Readiness;
  health: Health;
  observedGeneration: number;
  /** What start/stop/restart last asked for. */
  desiredState: DesiredRunState;
  conditions: Condition[];
}

export interface Service {
  metadata: ServiceMetadata;
  spec: ServiceSpec;
  status: ServiceStatus;
}

export interface CreateServiceRequest extends CallOptions {
  name: string;
  backend: ServiceBackend;
  labels?: Labels | undefined;
}

export interface GetServiceRequest extends CallOptions {
  name: string;
}

export interface ListServicesRequest extends CallOptions, PageOptions {}

export interface UpdateServiceRequest extends CallOptions {
  name: string;
  backend?: ServiceBackend | undefined;
  labels?: Labels | undefined;
  /** The generation you last read; a stale value fails with `op.precondition_failed`. */
  ifMatchGeneration: number;
  /**
   * The `metadata.resourceVersion` you last read, to guard a read-modify-write of `labels`:
   * labels do not move the generation, so two label edits at the same generation would
   * otherwise both succeed. A stale value fails with `op.precondition_failed`.
   */
  ifMatchResourceVersion?: string | undefined;
}

export interface DeleteServiceRequest extends CallOptions {
  name: string;
  ifMatchGeneration: number;
  /** Tear down a service that is still running. */
  force?: boolean | undefined;
}

/** What `wait` (and `waitUntil`) polls for. */
export type ServiceWaitTarget = "ready" | "healthy" | "stopped";

export interface PollOptions {
  /** Deadline for the poll, in milliseconds. Default 30 000. */
  timeoutMs?: number | undefined;
  /** Delay between polls, in milliseconds. Default 250. */
  intervalMs?: number | undefined;
}

export interface StartServiceRequest extends CallOptions, PollOptions {
  name: string;
  /** Poll until the service is ready or healthy before returning. */
  waitUntil?: "ready" | "healthy" | undefined;
}

export type RestartServiceRequest = StartServiceRequest;

export interface StopServiceRequest extends CallOptions, PollOptions {
  name: string;
  /** Poll until the service is stopped before returning. */
  waitUntil?: "stopped" | undefined;
}

export interface WaitServiceRequest extends CallOptions, PollOptions {
  name: string;
  until: ServiceWaitTarget;
}

// ---------------------------------------------------------------------------------------------
// Sandboxes
// ---------------------------------------------------------------------------------------------

export type SandboxLifecycleState = "pending" | "creating" | "ready" | "stopping" | "stopped" | "failed";

/** What `sandboxes.wait` polls for: `ready` (the process runs) or `stopped` (it ended: the
 * sandbox is `stopped` or `failed`). */
export type SandboxWaitTarget = "ready" | "stopped";

export interface WaitSandboxRequest extends CallOptions, PollOptions {
  id: string;
  until: SandboxWaitTarget;
}

export interface SandboxMetadata extends ResourceMetadata {
  id: string;
}

export interface SandboxEndpoint {
  address: string;
  ports: number[];
}

export interface SandboxStatus {
  lifecycleState: SandboxLifecycleState;
  readiness: Readiness;
  /** `healthy` while its process runs, `unhealthy` once failed, else `unknown` (no health check of its own). */
  health: Health;
  /** How to reach the sandbox from the host; empty until it runs. */
  endpoints: SandboxEndpoint[];
  /** Set once the process has ended. */
  exitCode?: number | undefined;
  observedGeneration: number;
  conditions: Condition[];
}

export interface Sandbox {
  metadata: SandboxMetadata;
  /**
   * The spec as created (launch inputs redacted) plus the profile it was created with. The
   * owner is `standalone` for sandboxes created through `sandboxes.create`, `service` for the
   * sandboxes a service runs (listed with the `nimbus.service` label).
   */
  spec: SandboxSpecView<SandboxOwner> & { profile: SandboxProfile };
  status: SandboxStatus;
}

export interface CreateSandboxRequest extends CallOptions {
  profile: SandboxProfile;
  /** Standalone sandboxes only; service-owned sandboxes are created by the service manager. */
  spec: SandboxSpec<StandaloneOwner>;
  labels?: Labels | undefined;
}

export interface SandboxIdRequest extends CallOptions {
  id: string;
}

export interface ListSandboxesRequest extends CallOptions, PageOptions {
  labelKey?: string | undefined;
  labelValue?: string | undefined;
  state?: SandboxLifecycleState | undefined;
}

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

/** Channels: sandbox or sandbox-backed service → stdio, files; built-in browser → cdp, page. */
export type SessionChannel = "cdp" | "page" | "stdio" | "files";

export interface ServiceSessionTarget {
  service: { name: string };
  sandbox?: never;
}

export interface SandboxSessionTarget {
  sandbox: { id: string };
  service?: never;
}

/** Exactly one of a service (by name) or a sandbox (by id). */
export type SessionTarget = ServiceSessionTarget | SandboxSessionTarget;

export type SessionLifecycleState = "open" | "closed" | "expired";

/** What the session attached to, pinned at open time. */
export interface TargetSnapshot {
  kind: "service" | "sandbox";
  name?: string | undefined;
  id?: string | undefined;
  generation: number;
  backend: ServiceBackendKind | SandboxBackendKind;
}

export interface SessionMetadata extends ResourceMetadata {
  id: string;
  /** The principal that opened it (credential id or workload). */
  createdBy: string;
}

export interface SessionSpec {
  target: SessionTarget;
  channels: SessionChannel[];
  /** What the opener asked for; null when it asked for the default. */
  requestedTtlMs: number | null;
  /** The TTL applied after the default (15 minutes) and the cap (1 hour). */
  ttlMs: number;
  /** True when the requested TTL was above the cap and was lowered to it. */
  ttlClamped: boolean;
  /** When the session expires; reflects the server's cap (1 hour) if the request asked for more. */
  expiresAt: Timestamp;
  targetSnapshot: TargetSnapshot;
}

export interface SessionStatus {
  lifecycleState: SessionLifecycleState;
  closeReason?: string | undefined;
  endedAt?: Timestamp | undefined;
  conditions?: Condition[] | undefined;
}

export interface Session {
  metadata: SessionMetadata;
  spec: SessionSpec;
  status: SessionStatus;
}

export interface OpenSessionRequest extends CallOptions {
  target: SessionTarget;
  channels: SessionChannel[];
  /** Default 15 minutes; capped at 1 hour. */
  requestedTtlMs?: number | undefined;
}

export interface SessionIdRequest extends CallOptions {
  id: string;
}

export interface ListSessionsRequest extends CallOptions, PageOptions {
  state?: SessionLifecycleState | undefined;
}

export interface CloseSessionRequest extends CallOptions {
  id: string;
  reason: string;
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/** Stable error codes the server documents (the catalog is append-only; the server may add more). */
export const SERVER_ERROR_CODES = [
  "request.invalid_argument",
  "request.method_not_allowed",
  "auth.unauthenticated",
  "auth.permission_denied",
  "resource.not_found",
  "resource.already_exists",
  "resource.conflict",
  "state.invalid_transition",
  "op.precondition_failed",
  "quota.exhausted",
  "op.not_supported",
  "runtime.unavailable",
  "internal",
] as const;
export type ServerErrorCode = (typeof SERVER_ERROR_CODES)[number];

/** Codes the SDK raises itself, when there is no server answer to report. */
export const CLIENT_ERROR_CODES = [
  "client.not_configured",
  "client.invalid_argument",
  "client.network",
  "client.invalid_response",
  "client.deadline_exceeded",
  "client.condition_unreachable",
  "client.aborted",
] as const;
export type ClientErrorCode = (typeof CLIENT_ERROR_CODES)[number];

/** The error envelope of every non-2xx response. */
export interface ErrorBody {
  error: {
    code: string;
    message: string;
    details?: Record<string, unknown> | undefined;
  };
}
