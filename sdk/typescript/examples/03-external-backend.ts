// Guide sample: an external backend. The guide shows the `backend` value alone; here it sits in a create call.
import { Nimbus } from "@nimbus/nimbus";
const nimbus = new Nimbus({
  endpoint: "http://localhost:8080",
  tenantId: "demo",
  token: process.env.NIMBUS_TOKEN,
});

const search = await nimbus.services.create({ // wraps the guide's fragment
  name: "search", // wraps the guide's fragment
  // An external endpoint Nimbus health-checks but does not run.
  backend: {
    kind: "external",
    endpoint: { url: "https://search.internal:9200" },
    auth: { kind: "none" },
    health: { kind: "http", path: "/healthz" },
  },
}); // wraps the guide's fragment
console.log(search.metadata.name, search.spec.backend.kind, search.status.lifecycleState); // test hook, not in the guide
