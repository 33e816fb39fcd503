export { Nimbus, type ClientSettings } from "./client.js";
export { NimbusError, isNimbusError, type NimbusErrorInit } from "./errors.js";
export type { Credential, CredentialKind, NimbusOptions } from "./config.js";
export { Services, DEFAULT_WAIT_INTERVAL_MS, DEFAULT_WAIT_TIMEOUT_MS, describeServiceStatus, serviceReached } from "./services.js";
export { Sandboxes } from "./sandboxes.js";
export { Sessions } from "./sessions.js";
export { SDK_VERSION } from "./version.js";
export type * from "./types.js";
export { CLIENT_ERROR_CODES, SERVER_ERROR_CODES } from "./types.js";
