// Sums test cases from vitest JUnit reports plus the static checks; prints "N passed, N failed".
import { existsSync, readFileSync } from 'node:fs'

const args = process.argv.slice(2)
const checksFailed = Number(args.pop())
const checksPassed = Number(args.pop())
let passed = 0
let failed = 0
for (const file of args) {
  if (!existsSync(file)) {
    console.log(`ci: no report at ${file}`)
    failed++
    continue
  }
  const xml = readFileSync(file, 'utf8')
  for (const m of xml.matchAll(/<testcase\b[^>]*?(\/>|>([\s\S]*?)<\/testcase>)/g)) {
    const body = m[2] ?? ''
    if (/<skipped\b/.test(body)) continue
    if (/<(failure|error)\b/.test(body)) failed++
    else passed++
  }
  // Errors outside any test (an unhandled rejection, a file that failed to load).
  for (const m of xml.matchAll(/<testsuite\b[^>]*\berrors="(\d+)"/g)) failed += Number(m[1])
}
// Static checks count only when they fail; a passing check is not a test.
failed += checksFailed
void checksPassed
console.log(`${passed} passed, ${failed} failed`)
process.exit(failed === 0 ? 0 : 1)
