import { segment, type Transport } from "./http.js";
import type {
  CallOptions,
  CloseSessionRequest,
  ListResponse,
  ListSessionsRequest,
  OpenSessionRequest,
  Session,
  SessionIdRequest,
} from "./types.js";

function call(req: CallOptions): CallOptions {
  return { tenantId: req.tenantId, signal: req.signal };
}

/**
 * Sessions: scoped, expiring leases on a running service or sandbox. This SDK version opens,
 * reads, lists and closes them; the stdio and files channels are not exposed yet.
 */
export class Sessions {
  constructor(private readonly http: Transport) {}

  /** `POST /sessions` body `{target, channels, requestedTtlMs?}` → 201. */
  async open(req: OpenSessionRequest): Promise<Session> {
    return this.http.request<Session>({
      method: "POST",
      path: "sessions",
      call: call(req),
      body: { target: req.target, channels: req.channels, requestedTtlMs: req.requestedTtlMs },
    });
  }

  /** `GET /sessions/{id}`. */
  async get(req: SessionIdRequest): Promise<Session> {
    return this.http.request<Session>({ method: "GET", path: `sessions/${segment(req?.id, "id")}`, call: call(req) });
  }

  /** `GET /sessions?state=&limit=&pageToken=`. */
  async list(req: ListSessionsRequest = {}): Promise<ListResponse<Session>> {
    return this.http.request<ListResponse<Session>>({
      method: "GET",
      path: "sessions",
      call: call(req),
      query: {
        state: req.state,
        limit: req.limit,
        // An empty token (what the last page returns) means "from the start".
        pageToken: req.pageToken === "" ? undefined : req.pageToken,
      },
    });
  }

  /** Every matching session, following `nextPageToken` until the last page. */
  async *listAll(req: ListSessionsRequest = {}): AsyncGenerator<Session, void, undefined> {
    let pageToken = req.pageToken;
    do {
      const page = await this.list({ ...req, pageToken });
      yield* page.items;
      pageToken = page.metadata?.nextPageToken;
    } while (pageToken !== undefined && pageToken !== "");
  }

  /** `POST /sessions/{id}/close` body `{reason}` → 200. */
  async close(req: CloseSessionRequest): Promise<Session> {
    return this.http.request<Session>({
      method: "POST",
      path: `sessions/${segment(req?.id, "id")}/close`,
      call: call(req),
      body: { reason: req.reason },
    });
  }
}
