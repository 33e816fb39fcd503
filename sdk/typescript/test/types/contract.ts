// Compile-time checks of the public types (run by `npm test` through `tsc -p test/types`):
// what the HTTP contract allows must type-check, what it forbids must not. Each
// `@ts-expect-error` fails the build if the line below it stops being an error. Compiled with
// exactOptionalPropertyTypes, so `token: process.env.X` keeps working for strict users.
import { Nimbus, NimbusError } from "@nimbus/nimbus";
import type { Service, ServiceBackend, SessionTarget, Sandbox, Session } from "@nimbus/nimbus";

const nimbus = new Nimbus({ endpoint: "http://localhost:8080", tenantId: "demo", token: process.env["NIMBUS_TOKEN"] });
new Nimbus();
new Nimbus({ credential: { kind: "workloadIdentity", value: "t" } });
// @ts-expect-error unknown credential kind
new Nimbus({ credential: { kind: "password", value: "t" } });

const backends: ServiceBackend[] = [
  { kind: "builtIn", provider: "modelGateway" },
  { kind: "external", endpoint: { url: "http://h" } },
  { kind: "external", endpoint: { url: "http://h" }, auth: { kind: "bearer", token: "x" }, health: { kind: "tcp", timeoutMs: 100 } },
  {
    kind: "sandbox",
    sandbox: {
      owner: { kind: "service", serviceName: "w" },
      backend: "krun",
      root: { kind: "oci_image", source: { kind: "build", dockerfile: "FROM scratch", context: "/srv/ctx" } },
      process: { argv: ["x"], environment: { A: "1" }, workingDir: "/", user: "1000:1000" },
      network: { egress: { default: "deny", allow: [{ cidr: "10.0.0.1/32", ports: [80] }] } },
      resources: { memoryMb: 64, pids: 32, cpus: 1 },
    },
  },
];
void backends;
// @ts-expect-error unknown provider
const badProvider: ServiceBackend = { kind: "builtIn", provider: "ftp" };
// @ts-expect-error a service's sandbox cannot be standalone-owned
const badOwner: ServiceBackend = { kind: "sandbox", sandbox: { owner: { kind: "standalone" }, backend: "container", root: { kind: "rootfs", path: "/r" }, process: { argv: ["x"] } } };
void badProvider;
void badOwner;

// @ts-expect-error a session target names exactly one of service or sandbox
const both: SessionTarget = { service: { name: "a" }, sandbox: { id: "b" } };
void both;

async function calls(): Promise<void> {
  const s: Service = await nimbus.services.start({ name: "w", waitUntil: "healthy", timeoutMs: 10 });
  const n: number = s.metadata.generation;
  void n;
  // @ts-expect-error stop only waits until stopped
  await nimbus.services.stop({ name: "w", waitUntil: "ready" });
  // @ts-expect-error update needs ifMatchGeneration
  await nimbus.services.update({ name: "w", labels: {} });
  await nimbus.services.delete({ name: "w", ifMatchGeneration: 1, force: true });
  const sb: Sandbox = await nimbus.sandboxes.create({
    profile: "desktop",
    spec: { owner: { kind: "standalone" }, backend: "container", root: { kind: "rootfs", path: "/r" }, process: { argv: ["x"] } },
  });
  // Sandboxes a service runs come back with their owner.
  if (sb.spec.owner.kind === "service") {
    const owner: string = sb.spec.owner.serviceName;
    void owner;
  }
  await nimbus.services.update({ name: "w", labels: {}, ifMatchGeneration: 1, ifMatchResourceVersion: "7" });
  // The backend may be left out (it is then container), and always comes back.
  const plain: Sandbox = await nimbus.sandboxes.create({
    profile: "worker",
    spec: { owner: { kind: "standalone" }, root: { kind: "rootfs", path: "/r" }, process: { argv: ["x"] } },
  });
  const kind: "container" | "krun" = plain.spec.backend;
  void kind;
  const count: number = sb.spec.process.argv.valueCount;
  void count;
  // @ts-expect-error argv comes back redacted, not as strings
  const argv: string[] = sb.spec.process.argv;
  void argv;
  const text: string = await nimbus.sandboxes.logs({ id: sb.metadata.id });
  void text;
  // @ts-expect-error unknown sandbox state
  await nimbus.sandboxes.list({ state: "running" });
  const se: Session = await nimbus.sessions.open({ target: { sandbox: { id: sb.metadata.id } }, channels: ["files"] });
  // @ts-expect-error close needs a reason
  await nimbus.sessions.close({ id: se.metadata.id });
  // @ts-expect-error unknown channel
  await nimbus.sessions.open({ target: { service: { name: "w" } }, channels: ["ssh"] });
  try {
    await nimbus.services.get({ name: "w" });
  } catch (err) {
    if (err instanceof NimbusError && err.code === "op.precondition_failed") {
      const status: number | undefined = err.status;
      void status;
    }
  }
}
void calls;
