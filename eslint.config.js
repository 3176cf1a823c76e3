// Type-checked lint. Layering (no-restricted-imports) keeps dependencies pointing one way:
// cli -> coordinator | worker -> processing | transport | state -> protocol -> util.
import js from '@eslint/js'
import tseslint from 'typescript-eslint'

const layer = (files, banned) => ({
  files,
  rules: {
    'no-restricted-imports': [
      'error',
      {
        patterns: banned.map((b) => ({
          group: [`**/${b}/**`, `**/${b}/*`],
          message: `layering: ${files[0]} may not import ${b}/`,
        })),
      },
    ],
  },
})

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'coverage/**', '.tmp/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/switch-exhaustiveness-check': [
        'error',
        { considerDefaultExhaustiveForUnions: true },
      ],
      '@typescript-eslint/consistent-type-imports': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-console': 'error',
      'prefer-const': ['error', { ignoreReadBeforeAssign: true }],
      'no-restricted-properties': [
        'error',
        { object: 'it', property: 'only', message: 'no .only in committed tests' },
        { object: 'describe', property: 'only', message: 'no .only in committed tests' },
        { object: 'test', property: 'only', message: 'no .only in committed tests' },
      ],
    },
  },
  layer(['src/util/**'], ['protocol', 'transport', 'state', 'processing', 'coordinator', 'worker', 'cli']),
  layer(['src/protocol/**'], ['transport', 'state', 'processing', 'coordinator', 'worker', 'cli']),
  layer(['src/transport/**', 'src/state/**', 'src/processing/**'], ['coordinator', 'worker', 'cli']),
  layer(['src/coordinator/**', 'src/worker/**'], ['cli']),
  {
    files: ['src/cli/**', 'bench/**', 'test/**', 'cluster/**', '*.config.*'],
    rules: { 'no-console': 'off' },
  },
  {
    files: ['test/**', 'bench/**'],
    rules: {
      '@typescript-eslint/no-non-null-assertion': 'off',
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
    },
  },
  { files: ['**/*.js', '**/*.mjs'], ...tseslint.configs.disableTypeChecked },
  {
    // Plain Node scripts (CI helpers, the worker-thread loader) run outside the TS project.
    files: ['**/*.mjs', '.ci/**'],
    languageOptions: {
      globals: { process: 'readonly', console: 'readonly', URL: 'readonly', Buffer: 'readonly' },
    },
  },
  { files: ['.ci/**'], rules: { 'no-console': 'off' } },
)
