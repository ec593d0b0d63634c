// Drives the official `ollama` JavaScript client against gencli serve and prints what it got
// as one JSON object (tests/test_clients.py checks it). Usage: node ollama_client.mjs URL [KEY]
import { Ollama } from "ollama";

const [host, key] = process.argv.slice(2);
// the client sends its own API key only to ollama.com: another host needs the header itself
const client = new Ollama({ host, headers: key ? { Authorization: `Bearer ${key}` } : {} });
const out = {};
out.version = (await client.version()).version;
out.models = (await client.list()).models.map((m) => m.model);
out.show = await client.show({ model: "echo" });
out.generate = await client.generate({ model: "echo", prompt: "from js" });
const parts = [];
for await (const part of await client.chat({ model: "echo", stream: true, messages: [{ role: "user", content: "stream js" }] })) {
  parts.push(part.message.content);
}
out.chat = parts.join("");
out.unload = (await client.generate({ model: "echo", prompt: "", keep_alive: 0 })).done_reason;
try {
  await client.pull({ model: "not-in-models-json", stream: false });
  out.pull = "no error";
} catch (e) {
  out.pull = e.message;
}
process.stdout.write(JSON.stringify(out));
