// Tokenizes .nvr files with VS Code's own TextMate engine (vscode-textmate + vscode-oniguruma)
// and prints, for every line of every file, the innermost scope at each UTF-8 byte ("-" for
// the root scope only), space-separated, one JSON object {file: [line, ...]} in all.
// Used by tests/editors.rs; node finds the two packages through NODE_PATH.
'use strict';
const fs = require('fs');
const path = require('path');
const vsctm = require('vscode-textmate');
const oniguruma = require('vscode-oniguruma');

async function main() {
  const [grammarPath, ...files] = process.argv.slice(2);
  const wasm = fs.readFileSync(path.join(path.dirname(require.resolve('vscode-oniguruma')), 'onig.wasm'));
  await oniguruma.loadWASM(wasm.buffer);
  const registry = new vsctm.Registry({
    onigLib: Promise.resolve({
      createOnigScanner: (patterns) => new oniguruma.OnigScanner(patterns),
      createOnigString: (s) => new oniguruma.OnigString(s),
    }),
    loadGrammar: async () => vsctm.parseRawGrammar(fs.readFileSync(grammarPath, 'utf8'), grammarPath),
  });
  const grammar = await registry.loadGrammar('source.nvr');
  if (!grammar) throw new Error(`cannot load ${grammarPath}`);
  const out = {};
  for (const file of files) {
    let state = vsctm.INITIAL;
    const lines = [];
    for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
      const result = grammar.tokenizeLine(line, state);
      state = result.ruleStack;
      const bytes = [];
      for (const token of result.tokens) {
        const scopes = token.scopes.filter((s) => s !== 'source.nvr');
        const scope = scopes.length ? scopes[scopes.length - 1] : '-';
        for (const ch of line.slice(token.startIndex, token.endIndex)) {
          for (let i = 0; i < Buffer.byteLength(ch); i++) bytes.push(scope);
        }
      }
      lines.push(bytes.join(' '));
    }
    out[file] = lines;
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
