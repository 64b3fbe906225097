"use strict";

// vmxdbg's WinDbg script (docs/windbg.md). In a kernel session:
//
//     .scriptload C:\...\site-packages\vmxdbg\windbg\vmxcheck.js
//
// (.scriptload takes the rest of the line as the path and cannot take one with
// spaces: copy this file to a folder without spaces first; windbg-setup says how.)
//
// - loads the pykd bootstrapper (.load pykd);
// - defines the WinDbg alias !vmxcheck, so that `!vmxcheck ARGS` runs
//   `!py -3.9 -g -m vmxdbg.bang ARGS` (output in DML, with links);
// - registers the data-model function @$vmxtext("ARGS"), which runs the same
//   command and returns its plain-text lines: dx @$vmxtext("cpu 1").
//   It is not named vmxcheck: a function alias also answers `!NAME`, and would
//   then take `!vmxcheck ARGS` itself and evaluate ARGS as an expression.
//
// PYTHON picks the Python that pykd and vmxdbg are installed in; change it if
// yours is not 3.9 (`py -3.9 -m vmxdbg windbg-setup` prints the line to use).

var PYTHON = "-3.9";
var ENTRY = "!py " + PYTHON + " -g -m vmxdbg.bang";
var ALIAS = "vmxtext";

function execute(command) {
    return host.namespace.Debugger.Utility.Control.ExecuteCommand(command);
}

function vmxtext(args) {
    var line = ENTRY + " --text";
    if (args !== undefined && args !== null && String(args).length > 0) {
        line += " " + String(args);
    }
    var lines = [];
    for (var text of execute(line)) {
        lines.push(text);
    }
    return lines;
}

function initializeScript() {
    try {
        execute(".load pykd");
    } catch (e) {
        host.diagnostics.debugLog("vmxcheck.js: .load pykd failed (" + e + "); put pykd.dll in the extension folder\n");
    }
    execute("as !vmxcheck " + ENTRY);
    return [new host.apiVersionSupport(1, 7),
            new host.functionAlias(vmxtext, ALIAS)];
}
