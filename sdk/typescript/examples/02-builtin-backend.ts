// Guide sample: a built-in backend. The guide shows the `backend` value alone; here it sits in a create call.
import { Nimbus } from "@nimbus/nimbus";
const nimbus = new Nimbus({
  endpoint: "http://localhost:8080",
  tenantId: "demo",
  token: process.env.NIMBUS_TOKEN,
});

const browser = await nimbus.services.create({ // wraps the guide's fragment
  name: "browser", // wraps the guide's fragment
  // A built-in provider implemented by the server.
  backend: { kind: "builtIn", provider: "browser" },
  // Providers: "loadBalancer" | "serviceDiscovery" | "browser" | "modelGateway"
}); // wraps the guide's fragment
console.log(browser.metadata.name, browser.spec.backend.kind, browser.status.lifecycleState); // test hook, not in the guide
