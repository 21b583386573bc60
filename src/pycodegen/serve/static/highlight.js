// A small Python highlighter for the playground (part of pycodegen, same licence).
// Why not a vendored library: the page must work with no CDN, and one language needs only a
// tokenizer of ~40 lines, where highlight.js or Prism would add a bundle and a licence to vendor.
// It is re-run on the whole text at every streamed token, so it must accept unfinished code:
// an unterminated string or triple-quoted docstring runs to the end of the text.
(function () {
  "use strict";
  const KEYWORDS = new Set(("False None True and as assert async await break class continue def del elif else " +
    "except finally for from global if import in is lambda nonlocal not or pass raise return try while with " +
    "yield match case").split(" "));
  const BUILTINS = new Set(("abs all any bool dict enumerate filter float int isinstance len list map max min " +
    "open print range reversed round set sorted str sum tuple type zip self cls super ValueError TypeError " +
    "KeyError IndexError Exception").split(" "));
  const TOKEN = new RegExp([
    /(#[^\n]*)/.source,                                                  // 1 comment
    /([rbfuRBFU]{0,2}(?:"""[\s\S]*?(?:"""|$)|'''[\s\S]*?(?:'''|$)))/.source, // 2 triple-quoted string
    /([rbfuRBFU]{0,2}(?:"(?:\\.|[^"\\\n])*(?:"|$)|'(?:\\.|[^'\\\n])*(?:'|$)))/.source, // 3 string
    /(@[A-Za-z_][\w.]*)/.source,                                          // 4 decorator
    /(\b\d[\d_]*(?:\.\d*)?(?:[eE][+-]?\d+)?j?\b)/.source,                 // 5 number
    /([A-Za-z_]\w*)/.source,                                              // 6 name
  ].join("|"), "gm");

  function escapeHtml(text) {
    return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  function span(cls, text) { return '<span class="' + cls + '">' + escapeHtml(text) + "</span>"; }

  function highlightPython(code) {
    let out = "", last = 0, afterDef = false, m;
    TOKEN.lastIndex = 0;
    while ((m = TOKEN.exec(code)) !== null) {
      if (m[0] === "") { TOKEN.lastIndex++; continue; }
      out += escapeHtml(code.slice(last, m.index));
      last = m.index + m[0].length;
      if (m[1]) out += span("tok-com", m[1]);
      else if (m[2] || m[3]) out += span("tok-str", m[0]);
      else if (m[4]) out += span("tok-deco", m[4]);
      else if (m[5]) out += span("tok-num", m[5]);
      else if (afterDef) out += span("tok-def", m[6]);
      else if (KEYWORDS.has(m[6])) out += span("tok-kw", m[6]);
      else if (BUILTINS.has(m[6])) out += span("tok-builtin", m[6]);
      else out += escapeHtml(m[6]);
      afterDef = Boolean(m[6]) && (m[6] === "def" || m[6] === "class");
    }
    return out + escapeHtml(code.slice(last));
  }

  window.highlightPython = highlightPython;
  window.escapeHtml = escapeHtml;
})();
