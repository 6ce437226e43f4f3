// A real broker for the tests: `python -m broker` on free ports, stopped after each test.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import path from "node:path";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const PYTHON = process.env.SLIPSTREAM_PYTHON || path.join(ROOT, ".venv", "bin", "python");

/** Start a broker with TCP and WebSocket listeners; resolves to {tcp, ws, stop, kill}. */
export async function startBroker(...flags) {
  const wsPort = flags.includes("--ws") ? [] : ["--ws", "0"];
  const child = spawn(PYTHON, ["-m", "broker", "--port", "0", "-q", ...wsPort, ...flags],
                      { cwd: ROOT, stdio: ["ignore", "pipe", "inherit"] });
  const lines = createInterface({ input: child.stdout });
  const said = [];
  for await (const line of lines) {
    said.push(line);
    if (said.length === 2) break;
  }
  if (said.length < 2) throw new Error(`the broker did not start: ${said.join("\n")}`);
  const tcp = said[0].split("listening on ")[1];
  const ws = said[1].split("websocket on ")[1];
  const stop = async (signal = "SIGTERM") => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill(signal);
    await once(child, "exit");
  };
  return { tcp, ws, stop, kill: () => stop("SIGKILL"), child };
}
