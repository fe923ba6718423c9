// The import rules of vmplug's layers (docs/ARCHITECTURE.md "Layers and dependencies"), checked
// by `npm run depcheck` as part of `npm test`. Leaves first: api/ (the REST contract), core/ (ids,
// errors, gate) and qmp/ import nothing of ours; engines import only leaves (and storage/ the
// libvirt binding); the CLI imports only the contract; nothing imports tests or benchmarks.

/** Our top-level folders, for "anything of ours except ..." paths. */
const OURS = '^(api|core|qmp|libvirt|storage|net|daemon|cli|systemd|bin)/';

/** A rule: files under `from` may import of ours only what is under one of `allowed`. */
const onlyImports = (name, from, allowed, comment) => ({
  name,
  comment,
  severity: 'error',
  from: { path: `^${from}/` },
  to: { path: OURS, pathNot: [`^${from}/`, ...allowed.map((a) => `^${a}/`)] },
});

module.exports = {
  forbidden: [
    onlyImports('api-is-a-leaf', 'api', [], 'api/ is the wire contract the CLI shares with the server.'),
    onlyImports(
      'core-imports-only-the-contract',
      'core',
      ['api'],
      'core/ is imported by every engine; it imports only the wire contract (api/), whose types it shares.',
    ),
    onlyImports('qmp-is-a-leaf', 'qmp', [], 'qmp/ is a QMP client and knows nothing of vmplug.'),
    onlyImports(
      'libvirt-imports-core-only',
      'libvirt',
      ['core'],
      'the libvirt binding is a leaf over core/.',
    ),
    onlyImports(
      'storage-imports-leaves-only',
      'storage',
      ['qmp', 'core', 'api', 'libvirt'],
      'volume engines sit on the leaves and the libvirt binding, never on the daemon.',
    ),
    onlyImports(
      'net-imports-leaves-only',
      'net',
      ['qmp', 'core', 'api'],
      'the NIC engine sits on the leaves.',
    ),
    onlyImports(
      'cli-imports-no-server-code',
      'cli',
      ['api', 'core'],
      'the CLI and the typed client ship to CSI plugins: no daemon, engine or QMP code.',
    ),
    onlyImports('systemd-is-a-leaf', 'systemd', [], 'sd_notify and socket-activation glue.'),
    {
      name: 'nothing-imports-the-daemon',
      comment: 'daemon/ is the top of the server: engines and the CLI never reach up into it.',
      severity: 'error',
      from: { path: OURS, pathNot: '^(daemon|bin)/' },
      to: { path: '^daemon/' },
    },
    {
      name: 'nothing-imports-the-cli',
      comment: 'the CLI is a product of its own, not a library of the server.',
      severity: 'error',
      from: { path: OURS, pathNot: '^(cli|bin)/' },
      to: { path: '^cli/' },
    },
    {
      name: 'no-imports-of-tests',
      comment: 'production code never imports test or benchmark code.',
      severity: 'error',
      from: { pathNot: '^(test|bench)/' },
      to: { path: '^(test|bench)/' },
    },
    {
      name: 'no-cycles',
      severity: 'error',
      from: {},
      to: { circular: true },
    },
    {
      name: 'no-orphans',
      comment: 'a production module nothing imports is dead code (entry points excepted).',
      severity: 'error',
      from: {
        orphan: true,
        path: OURS,
        pathNot: [
          '\\.d\\.ts$',
          '^bin/',
          '^daemon/main\\.ts$',
          '^daemon/write-openapi\\.ts$',
          '^cli/main\\.ts$',
          '^libvirt/native/',
        ],
      },
      to: {},
    },
    {
      name: 'no-unresolvable',
      severity: 'error',
      from: {},
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^(node_modules|dist)/' },
    tsConfig: { fileName: 'tsconfig.json' },
    tsPreCompilationDeps: true,
    enhancedResolveOptions: {
      exportsFields: ['exports'],
      conditionNames: ['import', 'require', 'node', 'default', 'types'],
      extensions: ['.ts', '.js', '.mjs', '.cjs', '.json', '.node'],
    },
    skipAnalysisNotInRules: true,
  },
};
