// Guide sample: configure a client (every guide opens with it).
import { Nimbus } from "@nimbus/nimbus";
const nimbus = new Nimbus({
  endpoint: "http://localhost:8080",
  tenantId: "demo",
  token: process.env.NIMBUS_TOKEN,
});

export { nimbus }; // test hook, not in the guide
