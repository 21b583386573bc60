// The playground: send the prompt to this server's OpenAI-compatible API with streaming, and show the
// completion as it arrives, highlighted, with tokens/s. Plain browser APIs only (fetch + a stream reader).
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  let controller = null;

  function headers() {
    const h = { "Content-Type": "application/json" };
    const key = $("api-key").value.trim();
    if (key) h["Authorization"] = "Bearer " + key;
    return h;
  }

  function mode() { return document.querySelector('input[name="mode"]:checked').value; }

  function numberOr(id, fallback) {
    const v = $(id).value.trim();
    return v === "" ? fallback : Number(v);
  }

  function request(prompt) {
    const body = {
      max_tokens: numberOr("max-tokens", 64),
      temperature: numberOr("temperature", 0),
      top_p: numberOr("top-p", 1),
      stream: true,
      stream_options: { include_usage: true },
    };
    const seed = numberOr("seed", null);
    if (seed !== null) body.seed = seed;
    const stop = $("stop").value.replace(/\\n/g, "\n");
    if (stop) body.stop = [stop];
    if (mode() === "chat") {
      body.messages = [{ role: "user", content: prompt }];
      return ["/v1/chat/completions", body];
    }
    body.prompt = prompt;
    return ["/v1/completions", body];
  }

  function render(prompt, completion) {
    // In completion mode the prompt is part of the code: it is shown first, dimmed, then the completion.
    const echo = mode() === "complete" ? '<span class="prompt-echo">' + window.highlightPython(prompt) + "</span>" : "";
    $("output").innerHTML = echo + '<span class="completion">' + window.highlightPython(completion) + "</span>";
    $("output").dataset.text = completion;
  }

  function showStats(tokens, started, firstAt, done) {
    const now = performance.now();
    const seconds = (now - started) / 1000;
    const rate = tokens > 0 ? tokens / Math.max(seconds, 1e-3) : 0;
    const stats = $("stats");
    stats.dataset.tokens = String(tokens);
    stats.dataset.rate = rate.toFixed(2);
    stats.textContent = tokens + " tokens · " + rate.toFixed(1) + " tokens/s" +
      (firstAt !== null ? " · first token " + Math.round(firstAt - started) + " ms" : "") +
      " · " + seconds.toFixed(2) + " s" + (done ? "" : " …");
  }

  async function generate() {
    const prompt = $("prompt").value;
    const [path, body] = request(prompt);
    controller = new AbortController();
    $("generate").disabled = true;
    $("stop-button").disabled = false;
    $("status").textContent = "generating…";
    $("status").className = "muted";
    $("output").dataset.done = "false";
    let completion = "", tokens = 0, firstAt = null, usageTokens = null;
    const started = performance.now();
    render(prompt, "");
    try {
      const response = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body),
                                           signal: controller.signal });
      if (!response.ok) {
        const error = await response.json().catch(() => ({}));
        throw new Error((error.error && error.error.message) || response.statusText);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffered = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffered.indexOf("\n\n")) >= 0) {
          const line = buffered.slice(0, cut).trim();
          buffered = buffered.slice(cut + 2);
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          if (chunk.usage) usageTokens = chunk.usage.completion_tokens;
          for (const choice of chunk.choices || []) {
            const text = choice.text !== undefined ? choice.text : (choice.delta && choice.delta.content) || "";
            tokens += 1;
            if (firstAt === null) firstAt = performance.now();
            completion += text;
          }
          render(prompt, completion);
          showStats(tokens, started, firstAt, false);
        }
      }
      showStats(usageTokens !== null ? usageTokens : tokens, started, firstAt, true);
      $("status").textContent = "done";
    } catch (err) {
      if (err.name === "AbortError") {
        $("status").textContent = "stopped";
      } else {
        $("status").textContent = "error: " + err.message;
        $("status").className = "error";
      }
    } finally {
      $("output").dataset.done = "true";
      $("generate").disabled = false;
      $("stop-button").disabled = true;
      controller = null;
    }
  }

  async function loadModel() {
    try {
      const response = await fetch("/v1/models", { headers: headers() });
      const data = await response.json();
      const model = data.data[0];
      $("model").textContent = model.id + (model.fim ? " · fill-in-the-middle" : "");
    } catch (err) {
      $("model").textContent = "model list needs the API key";
    }
  }

  $("generate").addEventListener("click", generate);
  $("stop-button").addEventListener("click", () => controller && controller.abort());
  $("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate(); });
  $("api-key").addEventListener("change", loadModel);
  loadModel();
})();
