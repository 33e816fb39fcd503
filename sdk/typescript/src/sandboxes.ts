import { segment, type Transport } from "./http.js";
import type {
  CallOptions,
  CreateSandboxRequest,
  ListResponse,
  ListSandboxesRequest,
  Sandbox,
  SandboxIdRequest,
} from "./types.js";

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
