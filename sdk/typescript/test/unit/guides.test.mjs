// The examples are the guides' code samples, verbatim. This compares them with the reference
// guides' text (whitespace ignored, and a trailing comma before a closing bracket or a comment,
// which the guides' flattened layout drops or keeps inconsistently). Lines an example adds are
// marked "test hook" or "wraps the guide's fragment" and are left out of the comparison.
//
// The guides are read from $NIMBUS_REFERENCE_DIR, else shared/reference beside the repository
// (where CI puts it). Without them this test fails and says where it looked.
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { describe, test } from "node:test";

import { PACKAGE_DIR } from "../support/server.mjs";

const REFERENCE_DIR = process.env.NIMBUS_REFERENCE_DIR || resolve(PACKAGE_DIR, "..", "..", "..", "shared", "reference");

const GUIDES = {
  sdk: "nimbus-sdk-guide.txt",
  services: "nimbus-manage-services.txt",
  sessions: "nimbus-open-sessions.txt",
  sandboxes: "nimbus-run-sandboxes.txt",
};

/** Which guides show each example. */
const SOURCES = {
  "00-configure-client": ["sdk", "services", "sessions", "sandboxes"],
  "01-create-sandbox-service": ["sdk", "services"],
  "02-builtin-backend": ["sdk", "services"],
  "03-external-backend": ["sdk", "services"],
  "04-start-wait-ready": ["sdk", "services"],
  "05-wait-healthy": ["sdk", "services"],
  "06-update-delete": ["sdk", "services"],
  "07-list-services": ["sdk", "services"],
  "08-run-sandbox": ["sdk", "sandboxes"],
  "09-list-sandboxes": ["sdk", "sandboxes"],
  "10-sessions": ["sdk", "sessions"],
};

function normalize(text) {
  return text.replace(/\s+/g, "").replace(/,(?=\/\/|[}\])]|$)/g, "");
}

function guide(name) {
  const path = join(REFERENCE_DIR, GUIDES[name]);
  assert.ok(existsSync(path), `reference guide ${path} not found; set NIMBUS_REFERENCE_DIR to the directory holding ${Object.values(GUIDES).join(", ")}`);
  return normalize(readFileSync(path, "utf8"));
}

/** The example's code without its header comment and the lines it adds; chunks split at blank lines. */
function chunks(name) {
  const lines = readFileSync(join(PACKAGE_DIR, "examples", `${name}.ts`), "utf8").split("\n");
  assert.match(lines[0], /^\/\/ /, "line 1 is the example's header comment");
  const kept = lines.slice(1).filter((l) => !/test hook, not in the guide|wraps the guide's fragment/.test(l));
  return kept
    .join("\n")
    .split(/\n\s*\n/)
    .map((c) => c.trim())
    .filter((c) => c !== "");
}

describe("examples are the guides' samples", () => {
  test("every example file is listed with its guides", () => {
    const files = readdirSync(join(PACKAGE_DIR, "examples")).filter((f) => /^\d\d-.*\.ts$/.test(f)).map((f) => f.slice(0, -3));
    assert.deepEqual(files.sort(), Object.keys(SOURCES).sort());
  });

  for (const [name, sources] of Object.entries(SOURCES)) {
    test(`${name} appears verbatim in ${sources.map((s) => GUIDES[s]).join(", ")}`, () => {
      const parts = chunks(name);
      assert.ok(parts.length > 0);
      for (const source of sources) {
        const text = guide(source);
        for (const part of parts) {
          assert.ok(text.includes(normalize(part)), `this part of ${name} is not in ${GUIDES[source]}:\n${part}`);
        }
      }
    });
  }

  test("every example configures its client exactly as the guides do", () => {
    const [client] = chunks("00-configure-client");
    for (const name of Object.keys(SOURCES)) {
      assert.equal(chunks(name)[0], client, `${name} starts with the guides' client`);
    }
  });
});

describe("the README's sample", () => {
  test("is the code test/types/readme.ts type-checks", () => {
    const readme = readFileSync(join(PACKAGE_DIR, "README.md"), "utf8");
    const block = readme.split("```ts\n")[1]?.split("```")[0];
    assert.ok(block, "README.md has a ts code block");
    const checked = readFileSync(join(PACKAGE_DIR, "test", "types", "readme.ts"), "utf8");
    assert.ok(checked.includes(block), "test/types/readme.ts must hold the README's sample unchanged");
  });
});
