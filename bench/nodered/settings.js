// Node-RED 5 settings for the benchmark peer (bench/peer_nodered.py): headless, no editor, no HTTP nodes,
// credentials unencrypted (there are none worth protecting: the bench's InfluxDB has no auth).
// Paths and ports come from the environment so one settings file serves every run.
module.exports = {
    userDir: process.env.FG_NODERED_USERDIR,
    flowFile: process.env.FG_NODERED_FLOWS,
    credentialSecret: false,
    httpAdminRoot: false,
    httpNodeRoot: false,
    uiPort: 0,
    disableEditor: true,
    externalModules: { autoInstall: false, palette: { allowInstall: false } },
    // What a community integrator does to sign a webhook from a function node: hand it Node's crypto module.
    functionGlobalContext: { crypto: require("crypto") },
    logging: { console: { level: "info", metrics: false, audit: false } },
    editorTheme: { projects: { enabled: false } },
    telemetry: { enabled: false },
    diagnostics: { enabled: false },
    runtimeState: { enabled: false },
};
