// A recording stand-in for fetch, used only by unit tests: it answers from a queue (or a
// function) and records every request so tests can check URL, method, headers and body.

export function json(status, body, headers = {}) {
  return new Response(body === undefined ? "" : JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

export function errorBody(status, code, message, details = {}) {
  return json(status, { error: { code, message, details } });
}

/**
 * @param {Array<Response | Error | ((req) => Response | Promise<Response>)> | ((req) => Response | Promise<Response>)} answers
 */
export function fakeFetch(answers = []) {
  const calls = [];
  const queue = Array.isArray(answers) ? [...answers] : undefined;
  const fetch = async (input, init = {}) => {
    const url = new URL(String(input instanceof Request ? input.url : input));
    const headers = Object.fromEntries(new Headers(init.headers ?? {}).entries());
    const req = {
      url,
      method: init.method ?? "GET",
      headers,
      body: init.body === undefined ? undefined : JSON.parse(String(init.body)),
      signal: init.signal,
    };
    calls.push(req);
    let answer;
    if (queue === undefined) answer = answers;
    else {
      if (queue.length === 0) throw new Error(`fake fetch: no answer queued for ${req.method} ${url}`);
      answer = queue.length === 1 ? queue[0] : queue.shift();
    }
    if (typeof answer === "function") answer = await answer(req);
    if (answer instanceof Error) throw answer;
    // A Response body can be read once; hand out a copy so a repeated last answer still works.
    return answer.clone();
  };
  return { fetch, calls };
}

export function service(overrides = {}) {
  const { status = {}, metadata = {}, backend = { kind: "builtIn", provider: "browser" } } = overrides;
  return {
    metadata: {
      name: "worker",
      tenantId: "demo",
      generation: 1,
      resourceVersion: "1",
      createdAt: "2026-01-01T00:00:00Z",
      updatedAt: "2026-01-01T00:00:00Z",
      labels: {},
      ...metadata,
    },
    spec: { backend },
    status: {
      lifecycleState: "stopped",
      readiness: "notReady",
      health: "unknown",
      observedGeneration: metadata.generation ?? 1,
      conditions: [],
      ...status,
    },
  };
}
