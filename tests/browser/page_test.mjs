// page_test.mjs: load duet serve's web page in headless chromium (Debian's) with the demo
// models behind it, submit the page's default demo question, wait for the streamed answer, and
// check: the expert's highlighted tokens carry the reference answer's digits; the p_defer chart
// has one point per token and a threshold line; the slider re-colours the tokens without a new
// request (0: every token would defer, 1: none); the spans follow the released text around
// stop texts and split characters; nothing loads from elsewhere; no page errors. Saves a screenshot.
// Usage: node page_test.mjs URL SCREENSHOT.png QUESTION REFERENCE   (CHROMIUM overrides /usr/bin/chromium)
import { chromium } from "playwright-core";

const [url, shot, question, ref] = process.argv.slice(2);
const fail = (msg) => { console.error("browser test: FAIL: " + msg); process.exitCode = 1; };
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
const setThreshold = (page, v) =>
  page.$eval("#thr", (e, v) => { e.value = v; e.dispatchEvent(new Event("input")); }, v);
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  let requests = 0;
  // the page must work offline: nothing may come from anywhere but the server
  const foreign = [];
  page.on("request", (r) => {
    if (r.url().includes("/v1/")) requests++;
    if (!r.url().startsWith(url) && !r.url().startsWith("data:")) foreign.push(r.url());
  });
  await page.goto(url);

  // the page offers the demo question in the frame tools/demo.sh uses
  const frame = "Please solve the following math problem with detailed steps.\n\nQuestion: " +
                question + "\nAnswer:";
  const prompt = await page.inputValue("#prompt");
  if (prompt !== frame) fail("default prompt is not the demo question: " + JSON.stringify(prompt));
  await page.fill("#prompt", frame);
  await setThreshold(page, "0.5");
  await page.click("#go");
  // the button comes back when the stream has ended
  await page.waitForFunction(() => document.getElementById("out").textContent.length > 0 &&
                                   !document.getElementById("go").disabled, null, { timeout: 60000 });
  await page.screenshot({ path: shot, fullPage: true });

  const spans = await page.$$eval("#out span", (s) => s.map((e) => ({
    text: e.textContent, source: e.dataset.source, cls: e.className, title: e.title })));
  const answer = await page.textContent("#out");
  const nExpert = spans.filter((s) => s.cls.split(" ").includes("expert")).length;
  // (a) a run of consecutive highlighted expert spans whose digits contain the reference answer's
  const isExpert = (s) => s.source === "expert" && s.cls.split(" ").includes("expert");
  const runs = [];
  let run = null;
  for (const s of spans) {
    if (isExpert(s)) { run = run === null ? s.text : run + s.text; continue; }
    if (run !== null) runs.push(run);
    run = null;
  }
  if (run !== null) runs.push(run);
  const inExpert = runs.some((r) => r.replace(/\D/g, "").includes(ref));
  const title = spans.find(isExpert)?.title || "";

  // (b) the chart: one dot per token, left to right, inside the plot; the threshold line at
  // the slider's value (the plot area's y runs from 128 at p_defer 0 up to 10 at 1, so 0.5 is 69)
  const dots = await page.$$eval("#pts circle", (c) => c.map((e) =>
    ({ x: Number(e.getAttribute("cx")), y: Number(e.getAttribute("cy")) })));
  const thrY = async () => Number(await page.getAttribute("#thrline", "y1"));
  const y05 = await thrY();
  if (dots.length !== spans.length) fail(`${dots.length} chart points for ${spans.length} tokens`);
  if (!dots.every((d, i) => d.y >= 10 && d.y <= 128 && (i === 0 || d.x > dots[i - 1].x)))
    fail("chart points out of order or outside the plot");
  if (Math.abs(y05 - 69) > 0.01) fail("threshold line at y " + y05 + " for 0.5, not 69");

  // (c) the slider, with no new request: 0 outlines every token (and dot), 1 none
  const before = requests;
  await setThreshold(page, "0");
  const over0 = await page.$$eval("#out span.over", (s) => s.length);
  const dots0 = await page.$$eval("#pts circle.over", (s) => s.length);
  const y0 = await thrY();
  await setThreshold(page, "1");
  const over1 = await page.$$eval("#out span.over, #pts circle.over", (s) => s.length);
  const y1 = await thrY();
  if (over0 !== spans.length || dots0 !== dots.length)
    fail(`threshold 0 outlines ${over0} of ${spans.length} tokens, ${dots0} of ${dots.length} points`);
  if (over1 !== 0) fail(`threshold 1 still outlines ${over1} tokens or points`);
  if (Math.abs(y0 - 128) > 0.01 || Math.abs(y1 - 10) > 0.01)
    fail(`threshold line at y ${y0} for 0 and ${y1} for 1, not 128 and 10`);
  if (requests !== before) fail("moving the slider sent a request");

  // spans against released text, hand-made: a stop text cut inside the third piece, and a
  // three-byte character sent as three U+FFFD pieces while the text holds it whole
  const layouts = await page.evaluate(() => {
    const run = (pieces, text) => {
      reset(pieces.length);
      for (const p of pieces) addToken({ id: 0, text: p, source: "base", p_defer: 0.25 });
      st.answer = text; st.done = true; layout();
      return st.spans.map((s) => s.textContent);
    };
    return [run(["A", " B", "</", "s>"], "A B"),
            run(["\n", "\uFFFD", "\uFFFD", "\uFFFD", " x"], "\n\u20ac x")];
  });
  const want = [["A", " B", "", ""], ["\n", "\u20ac", "", "", " x"]];
  if (JSON.stringify(layouts) !== JSON.stringify(want))
    fail("spans against the text: " + JSON.stringify(layouts) + ", want " + JSON.stringify(want));

  const freq = await page.textContent("#freq");
  const err = await page.textContent("#error");
  console.log(`browser test: ${spans.length} token spans, ${nExpert} expert, answer ` +
              `${JSON.stringify(answer)}, reference ${ref} in expert tokens: ${inExpert}, ` +
              `${dots.length} chart points, threshold 0/1 outlines ${over0}/${over1}, deferral ` +
              `frequency ${freq}, first expert title ${JSON.stringify(title)}, screenshot ${shot}`);
  if (err) fail("page shows an error: " + err);
  if (errors.length) fail("page errors: " + errors.join("; "));
  if (foreign.length) fail("the page loads from elsewhere: " + foreign.join(" "));
  if (!spans.length || spans.some((s) => !s.cls.split(" ").includes("tok")))
    fail("the answer is not one span per token");
  if (!inExpert) fail(`the reference answer ${ref} is not in the expert's tokens: ${JSON.stringify(runs)}`);
  if (!/p_defer=\d\.\d{3}/.test(title)) fail("expert span has no p_defer in its title");
  if (!/^\d+(\.\d)?%$/.test(freq)) fail("deferral frequency not shown: " + freq);
} finally {
  await browser.close();
}
