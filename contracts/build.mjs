// Rebuild contracts/ReportRegistry.json from contracts/ReportRegistry.sol with solc-js.
//
//   node contracts/build.mjs            write the artifact
//   node contracts/build.mjs --stdout   print it instead (the tests compare it with the committed one)
//   node contracts/build.mjs --check    exit 1 when the committed artifact differs
//
// solc is looked up in $TL_NODE_TOOLS/node_modules, else <repo>/.node-tools/node_modules (where
// .ci/install-node-tools.sh puts it). The artifact is reproducible only with the compiler version
// it names: install exactly that version (the install script pins it).
import { createRequire } from "node:module";
import { readFileSync, writeFileSync, renameSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "..");
const tools = process.env.TL_NODE_TOOLS || join(repo, ".node-tools");
const require = createRequire(join(tools, "node_modules", "noop.js"));

const NAME = "ReportRegistry";
const SOURCE = `contracts/${NAME}.sol`;
const ARTIFACT = join(here, `${NAME}.json`);
// The loader reads a packaged copy (contracts/ is not installed); both are written, byte-identical.
const PACKAGED = join(repo, "loader", "publish", `${NAME}.json`);
const EVM_VERSION = "shanghai";
const RUNS = 200;

function compile(solc) {
  const input = {
    language: "Solidity",
    sources: { [SOURCE]: { content: readFileSync(join(repo, SOURCE), "utf8") } },
    settings: {
      evmVersion: EVM_VERSION,
      optimizer: { enabled: true, runs: RUNS },
      outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
    },
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input)));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  for (const e of output.errors || []) process.stderr.write(e.formattedMessage + "\n");
  if (errors.length) process.exit(1);
  const contract = output.contracts[SOURCE][NAME];
  return {
    contractName: NAME,
    source: SOURCE,
    compiler: { name: "solc", version: solc.version() },
    evmVersion: EVM_VERSION,
    optimizer: { enabled: true, runs: RUNS },
    abi: contract.abi,
    bytecode: "0x" + contract.evm.bytecode.object,
    deployedBytecode: "0x" + contract.evm.deployedBytecode.object,
  };
}

let solc;
try {
  solc = require("solc");
} catch {
  process.stderr.write(`build.mjs: solc not found under ${tools}/node_modules; run .ci/install-node-tools.sh\n`);
  process.exit(2);
}
const text = JSON.stringify(compile(solc), null, 2) + "\n";
const mode = process.argv[2] || "";
if (mode === "--stdout") {
  process.stdout.write(text);
} else if (mode === "--check") {
  for (const path of [ARTIFACT, PACKAGED]) {
    if (readFileSync(path, "utf8") !== text) {
      process.stderr.write(`build.mjs: ${path} differs from a fresh build; run node contracts/build.mjs\n`);
      process.exit(1);
    }
  }
} else if (mode === "") {
  for (const path of [ARTIFACT, PACKAGED]) {
    writeFileSync(path + ".tmp", text);
    renameSync(path + ".tmp", path);
    process.stderr.write(`build.mjs: wrote ${path} (solc ${solc.version()}, evm ${EVM_VERSION})\n`);
  }
} else {
  process.stderr.write("usage: node contracts/build.mjs [--stdout|--check]\n");
  process.exit(2);
}
