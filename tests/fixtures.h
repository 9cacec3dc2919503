/* fixtures.h: model files shared by the tests (see fixtures.c). */
#ifndef DUET_TEST_FIXTURES_H
#define DUET_TEST_FIXTURES_H

#include <stddef.h>
#include <stdint.h>

/* Path of a readable file under ../shared, or NULL when absent. */
const char *fixture_shared(const char *rel);
/* "stories260K", "tok105" or "tok361" imported to GGUF (once per run); NULL when the shared
 * files are absent (the caller skips) or the import failed (the test fails). */
const char *fixture_llama2c(const char *name);
/* A random-weight llama (n_embd 128, 2 layers, 4 heads / 2 kv, n_ff 256, vocab 600) with
 * matrices of the given type; the same seed gives the same underlying f32 draws. */
const char *fixture_random(int type, uint64_t seed, int tied);
/* A random-weight model of architecture arch (make-model --arch) with matrices of the given
 * type: n_embd 64, 3 layers,
 * 4 heads / 2 kv, n_ff 96, vocab 300, n_ctx 64, weights N(0, 0.25) so attention is sharp;
 * qwen3 and gemma2 with head_dim 24 (not n_embd / n_head), phi3 with partial RoPE (12 of 16
 * dims), phi3 and gemma2 with a sliding window of 4, gemma2 with soft caps 2 (attention) and
 * 5 (logits) that bind on these weights. Options change it: swa/caps 0 = those defaults.
 * arch "phi3-longrope": phi3 with LongRoPE factors (original context 32 of 64). */
const char *fixture_arch(const char *arch, int type, int n_swa, float attn_softcap,
                         float final_softcap);

/* A whole file, NUL-terminated (*n its size; n may be NULL), or NULL. Caller frees. */
char *fixture_read_file(const char *path, size_t *n);
/* The first n lines of the file src, as a file of the run's own (test_tmpdir()/name); NULL
 * when src cannot be read or the copy written. */
const char *fixture_first_lines(const char *src, const char *name, int n);
/* text as the file test_tmpdir()/name; NULL when it cannot be written. */
const char *fixture_write_text(const char *name, const char *text);
/* Whole files equal byte for byte; 0 when either is missing. */
int fixture_same_file(const char *a, const char *b);
/* Load a model with 2 threads; a failure fails the current test and returns NULL. */
struct duet_model *fixture_load(const char *path);
/* Logits of every position after one evaluation of toks[0..n) from an empty context:
 * malloc'd [n][n_vocab]; NULL (and the current test failed) on error. */
float *fixture_logits(const char *path, const int32_t *toks, int n);
/* A hand-made head for base b: a seeded random direction, elements uniform in
 * [-scale/2, scale/2] (scale 0.5 spreads a random model's scores over a few logits). */
struct duet_head *fixture_random_head(struct duet_model *b, uint64_t seed, float scale);

/* A random-weight model to chat with: fixture_random's vocabulary with ids 598 and 599 turned
 * into the ChatML control tokens, and a ChatML template in tokenizer.chat_template. */
#define FIXTURE_CHAT_TEMPLATE                                                                   \
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "              \
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"    \
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
#define FIXTURE_CHAT_IM_START 598
#define FIXTURE_CHAT_IM_END 599
const char *fixture_chat_model(void);

/* A random-weight llama (n_embd 64, 2 layers, n_ctx 128) whose vocabulary holds tokens longer
 * than any small piece buffer: <unk> (0), <s> (1, BOS), </s> (2), the 256 byte tokens
 * <0x00>..<0xFF> (3..258), then FIXTURE_LONG_N plain tokens: id 259 + i has 300 + 7i bytes,
 * byte j being 'a' + (id + j) % 26. eos is the end-of-sequence id; name tells files apart. */
#define FIXTURE_LONG_N 41
const char *fixture_long_vocab_model(uint32_t eos, const char *name);

/* A LoRA adapter (llama.cpp's GGUF) of rank r for a fixture_random model (n_embd 128, n_ff
 * 256, vocab 600, 2 layers, untied): every layer matrix kind and the output, A and B of type t
 * (DT_F32 or DT_F16), elements uniform in [-0.25, 0.25]; bad spoils it as named. Written to
 * the run's temporary directory as name; NULL (and the test failed) on error. */
enum { LORA_GOOD, LORA_BAD_ARCH, LORA_BAD_SHAPE, LORA_BAD_NO_B, LORA_BAD_NAN, LORA_BAD_TYPE_META,
       LORA_BAD_NAME };
const char *fixture_lora(const char *name, int r, float alpha, int t, int bad);

/* Run `$DUET_BIN ARGS` with stdout to /dev/null and stdin from /dev/null; stderr into
 * err[cap] (NUL-terminated; tag names its temporary file); the exit status. */
int fixture_run_cli(const char *args, const char *tag, char *err, size_t cap);
/* The same with stdout to the file out. */
int fixture_run_cli_to(const char *args, const char *out, const char *tag, char *err, size_t cap);

#endif
