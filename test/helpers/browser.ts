/**
 * Debian's chromium driven by playwright-core (../shared/recipes/browser.md): playwright-core
 * never downloads a browser, so the system one is found at run time. A missing browser fails
 * the test with the command that installs it (never a skip: .ci/run installs it).
 */
import { execFileSync } from 'node:child_process'
import { chromium, type Browser } from 'playwright-core'

export function chromiumPath(): string {
  const p = execFileSync('sh', ['-c', 'command -v chromium || true'], { encoding: 'utf8' }).trim()
  if (!p) {
    throw new Error(
      'chromium is not installed, and the browser tests need it: apt-get install -y chromium (.ci/run does this)',
    )
  }
  return p
}

export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: chromiumPath(),
    // As root Chromium refuses to start sandboxed.
    args: process.getuid?.() === 0 ? ['--no-sandbox'] : [],
  })
}
