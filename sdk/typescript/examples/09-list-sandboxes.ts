// Guide sample: filter sandbox listings by label.
import { Nimbus } from "@nimbus/nimbus";
const nimbus = new Nimbus({
  endpoint: "http://localhost:8080",
  tenantId: "demo",
  token: process.env.NIMBUS_TOKEN,
});

const batch = await nimbus.sandboxes.list({
  labelKey: "purpose",
  labelValue: "batch",
});
console.log(JSON.stringify(batch.items.map((s) => s.metadata.id))); // test hook, not in the guide
