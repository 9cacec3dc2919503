// page_test.mjs: load duet serve's web page in headless chromium (Debian's), submit a prompt,
// wait for the streamed answer, check that expert tokens are highlighted with p_defer on
// hover and that the deferral frequency is shown, and save a screenshot.
// Usage: node page_test.mjs URL SCREENSHOT.png   (CHROMIUM overrides /usr/bin/chromium)
import { chromium } from "playwright-core";

const [url, shot] = process.argv.slice(2);
const fail = (msg) => { console.error("browser test: FAIL: " + msg); process.exitCode = 1; };
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  await page.fill("#prompt", "Once upon a time");
  await page.fill("#max", "48");
  // 0.5 gives a mix with this untrained head (its p_defer sits near 0.5); should this CPU's
  // rounding put every token below it, 0.3 makes the expert write all of them
  let nExpert = 0;
  for (const thr of ["0.5", "0.3"]) {
    await page.$eval("#thr", (e, v) => { e.value = v; e.dispatchEvent(new Event("input")); }, thr);
    await page.click("#go");
    // the button comes back when the stream has ended
    await page.waitForFunction(() => document.getElementById("out").textContent.length > 0 &&
                                     !document.getElementById("go").disabled, null, { timeout: 60000 });
    nExpert = await page.$$eval("#out span.expert", (s) => s.length);
    if (nExpert) break;
  }
  const nSpans = await page.$$eval("#out span", (s) => s.length);
  const title = nExpert ? await page.getAttribute("#out span.expert", "title") : "";
  const freq = await page.textContent("#freq");
  const err = await page.textContent("#error");
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`browser test: ${nSpans} spans, ${nExpert} highlighted expert spans, deferral ` +
              `frequency ${freq}, first expert title ${JSON.stringify(title)}, screenshot ${shot}`);
  if (err) fail("page shows an error: " + err);
  if (errors.length) fail("page errors: " + errors.join("; "));
  if (!nExpert) fail("no highlighted expert tokens");
  if (!/p_defer=0\.\d{3}/.test(title)) fail("expert span has no p_defer in its title");
  if (!/^\d+(\.\d)?%$/.test(freq)) fail("deferral frequency not shown: " + freq);
} finally {
  await browser.close();
}
