// The README's sample, kept here so `npm test` type-checks it. Keep in step with README.md.
import { Nimbus, NimbusError } from "@nimbus/nimbus";

const nimbus = new Nimbus({
  endpoint: "http://localhost:8080",
  tenantId: "demo",
  token: process.env.NIMBUS_TOKEN,
});

const created = await nimbus.services.create({
  name: "worker",
  backend: { kind: "builtIn", provider: "loadBalancer" },
  labels: { team: "search" },
});

await nimbus.services.update({
  name: "worker",
  backend: { kind: "builtIn", provider: "serviceDiscovery" },
  ifMatchGeneration: created.metadata.generation,
});

try {
  // `created` is stale now: the update above moved the service to the next generation.
  await nimbus.services.update({ name: "worker", labels: {}, ifMatchGeneration: created.metadata.generation });
} catch (err) {
  if (err instanceof NimbusError && err.code === "op.precondition_failed") {
    // re-read and retry
  }
}
export {};
