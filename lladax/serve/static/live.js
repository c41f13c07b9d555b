// The live view: a chat whose replies are drawn as the sampler's canvas, step by step.
// POST /v1/canvas answers server-sent events: {"step", "steps", "canvas", "done"} per step
// (canvas: one entry per generated position, token text or null for a mask, "" for the end
// padding), then {"text"} and [DONE]; an {"error"} event or a non-2xx answer ends a reply.
"use strict";

const $ = (selector) => document.querySelector(selector);
const OPTIONS = ["gen_length", "steps", "block_length", "temperature", "seed"];
let messages = []; // the conversation so far: [{role, content}]

function bubble(role, text) {
  const el = document.createElement("div");
  el.className = `msg ${role}`;
  el.innerHTML = `<span class="status"></span><div class="role"></div>`;
  el.querySelector(".role").textContent = role;
  if (text !== undefined) el.append(Object.assign(document.createElement("div"),
    { className: "text", textContent: text }));
  $("#chat").append(el);
  el.scrollIntoView({ block: "end" });
  return el;
}

function drawCanvas(el, canvas, previous, done) {
  const cells = canvas.map((token, i) => {
    const cell = document.createElement("span");
    cell.className = token === null ? "cell mask" : token === "" ? "cell end" : "cell";
    if (!done && token !== null && previous && previous[i] === null) cell.classList.add("new");
    cell.textContent = token === null ? " " : token;
    return cell;
  });
  el.replaceChildren(...cells);
  el.dataset.masks = String(canvas.filter((t) => t === null).length);
}

async function* serverEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const data = buffer.slice(0, end).split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trim()).join("\n");
      buffer = buffer.slice(end + 2);
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

function requestBody() {
  const body = { messages };
  for (const name of OPTIONS) {
    const value = $(`#${name}`).value.trim();
    if (value !== "") body[name] = Number(value);
  }
  return body;
}

function fail(el, message) {
  el.classList.add("error");
  el.querySelector(".status").textContent = "error";
  el.append(Object.assign(document.createElement("div"), { className: "text", textContent: message }));
}

async function reply(el) {
  const canvas = Object.assign(document.createElement("div"), { className: "canvas" });
  el.append(canvas);
  const status = el.querySelector(".status");
  status.textContent = "sampling…";
  const response = await fetch("v1/canvas", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(requestBody()),
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    return fail(el, body.error?.message ?? `HTTP ${response.status}`);
  }
  let previous = null;
  for await (const event of serverEvents(response)) {
    if (event.error) return fail(el, event.error.message);
    if (event.note) el.append(Object.assign(document.createElement("div"),
      { className: "note", textContent: event.note }));
    if (event.canvas) {
      drawCanvas(canvas, event.canvas, previous, event.done);
      previous = event.canvas;
      canvas.dataset.step = String(event.step);
      status.textContent = event.done
        ? `${event.step} step${event.step === 1 ? "" : "s"}`
        : `step ${event.step}/${event.steps}`;
    }
    if (event.text !== undefined) {
      el.append(Object.assign(document.createElement("div"), {
        className: event.text ? "text" : "text note",
        textContent: event.text || "(an empty reply: the model ended at once)",
      }));
      messages.push({ role: "assistant", content: event.text });
      el.dataset.done = "true";
    }
  }
}

async function send(event) {
  event.preventDefault();
  const text = $("#message").value.trim();
  if (!text || $("#send").disabled) return;
  $("#message").value = "";
  $("#send").disabled = true;
  messages.push({ role: "user", content: text });
  bubble("user", text);
  const el = bubble("assistant");
  try {
    await reply(el);
  } catch (error) {
    fail(el, `connection lost: ${error.message}`);
  } finally {
    if (el.dataset.done !== "true") messages.pop(); // a failed turn is not part of the chat
    $("#send").disabled = false;
    $("#message").focus();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#composer").addEventListener("submit", send);
  $("#message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) send(event);
  });
  $("#reset").addEventListener("click", () => { messages = []; $("#chat").replaceChildren(); });
  fetch("v1/models").then((r) => r.json()).then((body) => {
    $("#model").textContent = body.data?.[0]?.id ?? "";
  }).catch(() => {});
  $("#message").focus();
});
