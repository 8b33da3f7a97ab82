// Side-by-side chat: the question goes to each model id of the page through the OpenAI-compatible
// API, streamed; every side keeps its own conversation. Citations come with the last chunk.
const sides = [...document.querySelectorAll(".side")].map((el) => ({
  el, model: el.dataset.model, log: el.querySelector(".log"), history: [],
}));

function add(parent, tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  parent.appendChild(node);
  return node;
}

function showCitations(turn, citations) {
  if (!citations || !citations.length) return;
  const list = add(turn, "ul", "cites");
  for (const c of citations) {
    const item = add(list, "li");
    if (c.law && c.status !== "outside_corpus" && c.status !== "no_law") {
      const link = add(item, "a", "", c.line);
      link.href = `/articles/${encodeURIComponent(c.law)}/${c.article}`;
    } else {
      item.textContent = c.line;
    }
  }
}

async function ask(side, question, maxTokens) {
  const turn = add(side.log, "div", "turn");
  add(turn, "div", "q", question);
  const answer = add(turn, "div", "a", "");
  const meta = add(turn, "div", "meta", "…");
  side.el.dataset.state = "busy";
  const messages = [...side.history, { role: "user", content: question }];
  const started = performance.now();
  let tokens = 0, finish = "", citations = null, buffer = "";
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: side.model, messages, stream: true, max_tokens: maxTokens,
                             stream_options: { include_usage: true } }),
    });
    if (!resp.ok) throw new Error((await resp.json()).error.message);
    const reader = resp.body.getReader(), decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut).replace(/^data: /, "");
        buffer = buffer.slice(cut + 2);
        if (line === "[DONE]") continue;
        const chunk = JSON.parse(line);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) tokens = chunk.usage.completion_tokens;
        if (chunk.citations) citations = chunk.citations;
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) answer.textContent += choice.delta.content;
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
    side.history = [...messages, { role: "assistant", content: answer.textContent }];
    const secs = (performance.now() - started) / 1000;
    meta.textContent = `${tokens} tokens · ${secs.toFixed(1)} s · ${finish}`;
    showCitations(turn, citations);
    side.el.dataset.state = "done";
  } catch (err) {
    meta.textContent = `error: ${err.message}`;
    meta.classList.add("bad");
    side.el.dataset.state = "error";
  }
}

document.getElementById("ask").addEventListener("submit", async (event) => {
  event.preventDefault();
  const box = document.getElementById("question"), send = document.getElementById("send");
  const question = box.value.trim();
  if (!question) return;
  const maxTokens = parseInt(document.getElementById("max-tokens").value, 10) || 128;
  box.value = "";
  send.disabled = true;
  await Promise.all(sides.map((side) => ask(side, question, maxTokens)));
  send.disabled = false;
});

document.getElementById("reset").addEventListener("click", () => {
  for (const side of sides) { side.history = []; side.log.textContent = ""; delete side.el.dataset.state; }
});
