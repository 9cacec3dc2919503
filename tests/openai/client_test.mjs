// client_test.mjs: the official openai npm client against duet serve, the way an application
// uses it. Usage: node client_test.mjs BASE_URL MODEL_ID   (BASE_URL ends in /v1)
// Prints one line per call; exits 1 when any call does not behave as the OpenAI API does.
import OpenAI from "openai";

const [baseURL, modelId] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "none", maxRetries: 0, timeout: 60000 });
let failures = 0;
const check = (name, ok, detail) => {
  console.log(`openai client: ${ok ? "ok  " : "FAIL"} ${name}${detail ? ": " + detail : ""}`);
  if (!ok) failures++;
};

async function call(name, fn) {
  try {
    await fn();
  } catch (e) {
    check(name, false, `threw ${e.constructor.name}: ${e.message}`);
  }
}

async function streamText(stream, pick) {
  let text = "", chunks = 0, finish = null;
  for await (const chunk of stream) {
    chunks++;
    const c = chunk.choices[0];
    if (c) {
      text += pick(c) || "";
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  return { text, chunks, finish };
}

await call("models.list", async () => {
  const page = await client.models.list();
  const ids = page.data.map((m) => m.id);
  check("models.list", ids.includes(modelId), JSON.stringify(ids));
});

await call("models.retrieve", async () => {
  const m = await client.models.retrieve(modelId);
  check("models.retrieve", m.id === modelId && m.object === "model", JSON.stringify(m));
});

const prompt = "Once upon a time";
let whole = "";
await call("completions.create", async () => {
  const r = await client.completions.create({ model: modelId, prompt, max_tokens: 24, temperature: 0 });
  whole = r.choices[0].text;
  check("completions.create", typeof whole === "string" && whole.length > 0 &&
        r.usage.completion_tokens > 0 && r.object === "text_completion",
        `${r.usage.completion_tokens} tokens, finish ${r.choices[0].finish_reason}`);
});

await call("completions.create stream", async () => {
  const s = await client.completions.create({ model: modelId, prompt, max_tokens: 24, temperature: 0,
                                              stream: true });
  const { text, chunks, finish } = await streamText(s, (c) => c.text);
  check("completions.create stream", text === whole && chunks >= 2 && finish !== null,
        `${chunks} chunks, same text as the whole answer: ${text === whole}`);
});

await call("completions.create stop", async () => {
  // a stop text taken from the middle of the free answer: the answer must end before it
  const at = Math.floor(whole.length / 2), stop = whole.slice(at, at + 2);
  const r = await client.completions.create({ model: modelId, prompt, max_tokens: 24, temperature: 0,
                                              stop: [stop] });
  const t = r.choices[0].text;
  check("completions.create stop", whole.startsWith(t) && !t.includes(stop) &&
        r.choices[0].finish_reason === "stop", `stop ${JSON.stringify(stop)} -> ${JSON.stringify(t)}`);
});

const messages = [{ role: "system", content: "Be brief." }, { role: "user", content: "Hello there" }];
let chatWhole = "";
await call("chat.completions.create", async () => {
  const r = await client.chat.completions.create({ model: modelId, messages, max_tokens: 16, temperature: 0 });
  chatWhole = r.choices[0].message.content;
  check("chat.completions.create", r.object === "chat.completion" &&
        r.choices[0].message.role === "assistant" && typeof chatWhole === "string",
        `finish ${r.choices[0].finish_reason}`);
});

await call("chat.completions.create stream", async () => {
  const s = await client.chat.completions.create({ model: modelId, messages, max_tokens: 16,
                                                   temperature: 0, stream: true });
  const { text, chunks } = await streamText(s, (c) => c.delta && c.delta.content);
  check("chat.completions.create stream", text === chatWhole && chunks >= 2,
        `${chunks} chunks, same text: ${text === chatWhole}`);
});

await call("chat.completions.create stop", async () => {
  const stop = chatWhole.length > 4 ? chatWhole.slice(2, 4) : "zz";
  const r = await client.chat.completions.create({ model: modelId, messages, max_tokens: 16,
                                                   temperature: 0, stop });
  const t = r.choices[0].message.content;
  check("chat.completions.create stop", chatWhole.startsWith(t) && !t.includes(stop),
        `stop ${JSON.stringify(stop)} -> ${JSON.stringify(t)}`);
});

// errors come back as the client's typed errors, with the status and the server's message
for (const [name, fn, status] of [
  ["error: max_tokens out of range", () => client.completions.create({ model: modelId, prompt,
    max_tokens: -3 }), 400],
  ["error: bad role", () => client.chat.completions.create({ model: modelId,
    messages: [{ role: "wizard", content: "x" }] }), 400],
  ["error: unknown model", () => client.models.retrieve("no-such-model"), 404],
]) {
  try {
    await fn();
    check(name, false, "no error");
  } catch (e) {
    check(name, e instanceof OpenAI.APIError && e.status === status && e.message.length > 0,
          `${e.constructor.name} ${e.status}: ${e.message}`);
  }
}

console.log(`openai client: ${failures ? failures + " call(s) failed" : "every call passed"}`);
process.exitCode = failures ? 1 : 0;
