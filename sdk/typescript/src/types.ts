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
  labels?: Labels;
}

export type ConditionStatus = "True" | "False" | "Unknown";

/** A Kubernetes-style condition. */
export interface Condition {
  /** e.g. "Ready", "Healthy". */
  type: string;
  status: ConditionStatus;
  /** CamelCase machine-readable reason. */
  reason?: string;
  message?: string;
  lastTransitionTime?: Timestamp;
  observedGeneration?: number;
}

/** One page of a list call. `nextPageToken` is absent or empty on the last page. */
export interface ListResponse<T> {
  items: T[];
  metadata: ListMetadata;
}

export interface ListMetadata {
  nextPageToken?: string;
}

/** Options every call accepts. */
export interface CallOptions {
  /** Tenant for this call; defaults to the client's `tenantId`. */
  tenantId?: string;
  /** Aborts the call (and, for waits, the polling). */
  signal?: AbortSignal;
}

/** Paging options for list calls. */
export interface PageOptions {
  limit?: number;
  pageToken?: string;
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
  displayName?: string;
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
  environment?: Record<string, string>;
  workingDir?: string;
  user?: string;
}

/** How launch inputs come back in responses: their values are never readable back. */
export interface Redacted {
  redacted: true;
  valueCount: number;
}

/** The process as returned by the server: argv and environment redacted. */
export interface ProcessView {
  argv: Redacted;
  environment?: Redacted;
  workingDir?: string;
  user?: string;
}

export interface EgressRule {
  cidr: string;
  ports?: number[];
}

/** Outbound network policy; everything not allowed is denied. */
export interface NetworkPolicy {
  egress?: {
    default: "deny";
    allow?: EgressRule[];
  };
}

export interface ResourceLimits {
  memoryMb?: number;
  pids?: number;
  cpus?: number;
}

/** A sandbox spec as sent in a request. `owner` is generic so service backends can require a service owner. */
export interface SandboxSpec<Owner extends SandboxOwner = SandboxOwner> {
  owner: Owner;
  backend: SandboxBackendKind;
  root: SandboxRoot;
  process: ProcessSpec;
  network?: NetworkPolicy;
  resources?: ResourceLimits;
}

/** A sandbox spec as returned by the server (launch inputs redacted). */
export interface SandboxSpecView<Owner extends SandboxOwner = SandboxOwner>
  extends Omit<SandboxSpec<Owner>, "process"> {
  process: ProcessView;
  /** Echoed by servers that keep the profile in the spec. */
  profile?: SandboxProfile;
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

/** How Nimbus authenticates to an external endpoint. */
export interface NoExternalAuth {
  kind: "none";
}
export type ExternalAuth = NoExternalAuth;

/** How Nimbus health-checks an external endpoint. */
export interface HttpHealthCheck {
  kind: "http";
  path: string;
}
export type HealthCheck = HttpHealthCheck;

/** An external endpoint Nimbus health-checks but does not run. */
export interface ExternalServiceBackend {
  kind: "external";
  endpoint: ExternalEndpoint;
  auth: ExternalAuth;
  health?: HealthCheck;
}

export type ServiceBackend = SandboxServiceBackend | BuiltInServiceBackend | ExternalServiceBackend;
export type ServiceBackendKind = ServiceBackend["kind"];

/** A service backend as returned by the server (an embedded sandbox spec has its launch inputs redacted). */
export type ServiceBackendView =
  | { kind: "sandbox"; sandbox: SandboxSpecView<ServiceOwner> }
  | BuiltInServiceBackend
  | ExternalServiceBackend;

/** `declared`: a definition that is not launched (built-in and external services today). */
export type ServiceLifecycleState = "declared" | "stopped" | "starting" | "running" | "stopping" | "failed";
export type Readiness = "ready" | "notReady";
export type Health = "healthy" | "unhealthy" | "unknown";

export interface ServiceMetadata extends ResourceMetadata {
  name: string;
  id?: string;
}

export interface ServiceSpec {
  backend: ServiceBackendView;
}

export interface ServiceStatus {
  lifecycleState: ServiceLifecycleState;
  readiness: Readiness;
  health: Health;
  observedGeneration?: number;
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
  labels?: Labels;
}

export interface GetServiceRequest extends CallOptions {
  name: string;
}

export interface ListServicesRequest extends CallOptions, PageOptions {}

export interface UpdateServiceRequest extends CallOptions {
  name: string;
  backend?: ServiceBackend;
  labels?: Labels;
  /** The generation you last read; a stale value fails with `op.precondition_failed`. */
  ifMatchGeneration: number;
}

export interface DeleteServiceRequest extends CallOptions {
  name: string;
  ifMatchGeneration: number;
  /** Tear down a service that is still running. */
  force?: boolean;
}

/** What `wait` (and `waitUntil`) polls for. */
export type ServiceWaitTarget = "ready" | "healthy" | "stopped";

export interface PollOptions {
  /** Deadline for the poll, in milliseconds. Default 30 000. */
  timeoutMs?: number;
  /** Delay between polls, in milliseconds. Default 250. */
  intervalMs?: number;
}

export interface StartServiceRequest extends CallOptions, PollOptions {
  name: string;
  /** Poll until the service is ready or healthy before returning. */
  waitUntil?: "ready" | "healthy";
}

export type RestartServiceRequest = StartServiceRequest;

export interface StopServiceRequest extends CallOptions, PollOptions {
  name: string;
  /** Poll until the service is stopped before returning. */
  waitUntil?: "stopped";
}

export interface WaitServiceRequest extends CallOptions, PollOptions {
  name: string;
  until: ServiceWaitTarget;
}

// ---------------------------------------------------------------------------------------------
// Sandboxes
// ---------------------------------------------------------------------------------------------

export type SandboxLifecycleState = "pending" | "creating" | "ready" | "stopping" | "stopped" | "failed";

export interface SandboxMetadata extends ResourceMetadata {
  id: string;
}

export interface SandboxEndpoint {
  address: string;
  ports?: number[];
}

export interface SandboxStatus {
  lifecycleState: SandboxLifecycleState;
  endpoints?: SandboxEndpoint[];
  exitCode?: number;
  observedGeneration?: number;
  conditions: Condition[];
}

export interface Sandbox {
  metadata: SandboxMetadata;
  spec: SandboxSpecView;
  status: SandboxStatus;
  profile?: SandboxProfile;
}

export interface CreateSandboxRequest extends CallOptions {
  profile: SandboxProfile;
  /** Standalone sandboxes only; service-owned sandboxes are created by the service manager. */
  spec: SandboxSpec<StandaloneOwner>;
  labels?: Labels;
}

export interface SandboxIdRequest extends CallOptions {
  id: string;
}

export interface ListSandboxesRequest extends CallOptions, PageOptions {
  labelKey?: string;
  labelValue?: string;
  state?: SandboxLifecycleState;
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
  name?: string;
  id?: string;
  generation: number;
  backend: ServiceBackendKind | SandboxBackendKind;
}

export interface SessionMetadata extends ResourceMetadata {
  id: string;
}

export interface SessionSpec {
  target: SessionTarget;
  channels: SessionChannel[];
  requestedTtlMs?: number;
  /** When the session expires; reflects the server's cap (1 hour) if the request asked for more. */
  expiresAt: Timestamp;
  targetSnapshot: TargetSnapshot;
}

export interface SessionStatus {
  lifecycleState: SessionLifecycleState;
  closeReason?: string;
  conditions?: Condition[];
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
  requestedTtlMs?: number;
}

export interface SessionIdRequest extends CallOptions {
  id: string;
}

export interface ListSessionsRequest extends CallOptions, PageOptions {
  state?: SessionLifecycleState;
}

export interface CloseSessionRequest extends CallOptions {
  id: string;
  reason: string;
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/** Stable error codes the server documents (starter catalog; the server may add more). */
export type ServerErrorCode =
  | "request.invalid_argument"
  | "auth.unauthenticated"
  | "auth.permission_denied"
  | "resource.not_found"
  | "resource.already_exists"
  | "resource.conflict"
  | "state.invalid_transition"
  | "op.precondition_failed"
  | "quota.exhausted"
  | "op.not_supported"
  | "runtime.unavailable"
  | "internal";

/** Codes the SDK raises itself, when there is no server answer to report. */
export type ClientErrorCode =
  | "client.not_configured"
  | "client.invalid_argument"
  | "client.network"
  | "client.invalid_response"
  | "client.deadline_exceeded"
  | "client.aborted";

/** The error envelope of every non-2xx response. */
export interface ErrorBody {
  error: {
    code: string;
    message: string;
    details?: Record<string, unknown>;
  };
}
