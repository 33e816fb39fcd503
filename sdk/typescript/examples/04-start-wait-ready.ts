// Guide sample: start a service and wait for readiness.
import { Nimbus } from "@nimbus/nimbus";
const nimbus = new Nimbus({
  endpoint: "http://localhost:8080",
  tenantId: "demo",
  token: process.env.NIMBUS_TOKEN,
});

const service = await nimbus.services.start({ name: "worker", waitUntil: "ready" });
console.log(service.status.readiness); // test hook, not in the guide
