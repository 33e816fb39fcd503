import type { NimbusOptions, ResolvedConfig } from "./config.js";
import { Transport } from "./http.js";
import { Sandboxes } from "./sandboxes.js";
import { Services } from "./services.js";
import { Sessions } from "./sessions.js";

/** What discovery settled on, without the secret. */
export interface ClientSettings {
  endpoint: string;
  endpointSource: string;
  credentialKind: ResolvedConfig["credential"]["kind"];
  credentialSource: string;
  tenantId: string | undefined;
  tenantSource: string | undefined;
}

/**
 * The Nimbus client. Every option is optional; missing settings are discovered at the first
 * request (options, then environment, then the local credential file, then a workload identity
 * token file), and a request throws `client.not_configured` naming what to set when discovery
 * finds no endpoint or no credential.
 */
export class Nimbus {
  readonly services: Services;
  readonly sandboxes: Sandboxes;
  readonly sessions: Sessions;
  private readonly transport: Transport;

  constructor(options: NimbusOptions = {}) {
    // Copy so later mutation of the caller's object cannot change an existing client.
    this.transport = new Transport({ ...options });
    this.services = new Services(this.transport);
    this.sandboxes = new Sandboxes(this.transport);
    this.sessions = new Sessions(this.transport);
  }

  /** Runs discovery (if it has not run) and reports where each setting came from. Never includes the secret. */
  async settings(): Promise<ClientSettings> {
    const c = await this.transport.config();
    return {
      endpoint: c.endpoint,
      endpointSource: c.endpointSource,
      credentialKind: c.credential.kind,
      credentialSource: c.credential.source,
      tenantId: c.tenantId,
      tenantSource: c.tenantSource,
    };
  }
}
