/* serve.c: `duet serve`: the OpenAI-compatible HTTP server (duet_server_* in the library).
 * Flags follow llama.cpp's llama-server where one exists (-m, --host, --port, --api-key,
 * -np, -c, -t). Runs until SIGINT / SIGTERM. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd.h"
#include "duet.h"
#include "util.h"

static void serve_usage(FILE *f) {
    fprintf(f,
            "usage: duet serve -m BASE [--expert E | --expert-url URL] [--head H] [options]\n"
            "  -m, --model FILE       base model (the served model without an expert)\n"
            "  --expert FILE          local expert model\n"
            "  --expert-url URL       remote expert: a duet serve or llama.cpp server (--expert-api llama),\n"
            "                         or an OpenAI-compatible engine such as vLLM (--expert-api openai)\n"
            "  --expert-api NAME      llama (default) or openai\n"
            "  --expert-key KEY       API key of the remote expert\n"
            "  --expert-model NAME    model name sent to an openai expert\n"
            "  --expert-top-k K       log-probabilities asked per expert call (default 20)\n"
            "  --expert-retries N     retries after a failed expert call (default 2, backoff 100 ms doubling)\n"
            "  --expert-timeout MS    per expert HTTP request (default 30000)\n"
            "  --on-expert-failure P  fail (default: the request errors) or continue (the base decides\n"
            "                         the token; the response lists the tokens); per request too\n"
            "  --head FILE            deferral head of the base\n"
            "  --policy NAME          default policy (collm with --head; expert ones need an expert)\n"
            "  --threshold X          default deferral threshold\n"
            "  --chat-template NAME   chat format or template text (default: the model's; ChatML\n"
            "                         when it has none; duet chat --list-templates names them)\n"
            "  --host ADDR            IPv4 address to bind (default 127.0.0.1)\n"
            "  --port N               port (default 8080; 0 = any free port, printed at start)\n"
            "  --api-key KEY          require Authorization: Bearer KEY (not for / and /health)\n"
            "  -np, --parallel N      decoding slots (default 1); more requests queue\n"
            "  -c, --ctx-size N       context size (default min(training context, 4096))\n"
            "  -t, --threads N        threads (default: all cores)\n"
            "  --max-body BYTES       request body limit (default 1048576, at most 67108864)\n"
            "  --max-connections N    open connections (default 64)\n"
            "  --max-conns-per-ip N   open connections from one address (default 32)\n"
            "  --timeout S            idle connection timeout in seconds (default 60)\n"
            "  -ctk, --cache-type-k T KV cache type of keys: f32 (default) or f16\n"
            "  -ctv, --cache-type-v T KV cache type of values: f32 (default) or f16\n"
            "  --request-timeout S    a connection must send a whole request (headers and body)\n"
            "                         within S seconds or it is closed (default 10)\n"
            "  --allowed-hosts A,B    Host names accepted besides the bind address (and localhost\n"
            "                         on loopback); a 0.0.0.0 bind accepts any unless given; not\n"
            "                         checked with --api-key\n"
            "  --cors-origin O        web origin allowed to call the API (repeatable or a comma\n"
            "                         list; * for any; default: only the server's own page)\n"
            "  --quiet                no request log\n");
    lora_opts_usage(f);
}

/* What the command line sets. */
typedef struct serve_args {
    const char *model_path, *expert_path, *head_path;
    int n_threads, policy, port, max_body;
    duet_server_params sp;
    duet_expert_remote_params rp;
    lora_opts lora;
} serve_args;

/* Reads the command line into A; -1 to go on, else the exit status (0 after --help). */
static int parse_args(int argc, char **argv, serve_args *A) {
    static char origins[4096];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { serve_usage(stdout); return 0; }
        if (!strcmp(a, "--quiet")) { A->sp.quiet = 1; continue; }
        int lt = lora_opts_parse("serve", &A->lora, argc, argv, &i);
        if (lt < 0) return 2;
        if (lt) continue;
        if (!(v = arg_value("serve", argc, argv, &i))) return 2;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) A->model_path = v;
        else if (!strcmp(a, "--expert")) A->expert_path = v;
        else if (!strcmp(a, "--expert-url")) A->rp.url = v;
        else if (!strcmp(a, "--expert-api")) A->rp.api = v;
        else if (!strcmp(a, "--expert-key")) A->rp.api_key = v;
        else if (!strcmp(a, "--expert-model")) A->rp.model = v;
        else if (!strcmp(a, "--expert-top-k")) { if (!arg_int("serve", a, v, 1, 1 << 20, &A->rp.top_k)) return 2; }
        else if (!strcmp(a, "--expert-retries")) {
            if (!arg_int("serve", a, v, 0, 20, &A->rp.retries)) return 2;
            if (!A->rp.retries) A->rp.retries = -1; /* 0 in the struct means the default */
        } else if (!strcmp(a, "--expert-timeout")) { if (!arg_int("serve", a, v, 1, 3600000, &A->rp.timeout_ms)) return 2; }
        else if (!strcmp(a, "--on-expert-failure")) {
            if (strcmp(v, "fail") && strcmp(v, "continue")) {
                fprintf(stderr, "duet serve: --on-expert-failure '%s' is not fail or continue\n", v);
                return 2;
            }
            A->sp.defaults.expert_fallback = !strcmp(v, "continue");
        } else if (!strcmp(a, "--head")) A->head_path = v;
        else if (!strcmp(a, "--policy")) {
            if ((A->policy = duet_policy_from_name(v)) < 0) {
                fprintf(stderr, "duet serve: --policy '%s' is not one of collm, base, expert, random, "
                                "confidence, compose, proxy, contrastive, uncertainty, cd, cd_v2\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--threshold")) { if (!arg_float("serve", a, v, 0, 1e6, &A->sp.defaults.threshold)) return 2; }
        else if (!strcmp(a, "--chat-template")) A->sp.chat_template = v;
        else if (!strcmp(a, "--host")) A->sp.host = v;
        else if (!strcmp(a, "--port")) { if (!arg_int("serve", a, v, 0, 65535, &A->port)) return 2; }
        else if (!strcmp(a, "--api-key")) A->sp.api_key = v;
        else if (!strcmp(a, "-np") || !strcmp(a, "--parallel")) { if (!arg_int("serve", a, v, 1, 256, &A->sp.n_slots)) return 2; }
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) { if (!arg_int("serve", a, v, 0, 1 << 24, &A->sp.defaults.n_ctx)) return 2; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) { if (!arg_int("serve", a, v, 1, 256, &A->n_threads)) return 2; }
        else if (!strcmp(a, "--max-body")) { if (!arg_int("serve", a, v, 64, 64 << 20, &A->max_body)) return 2; }
        else if (!strcmp(a, "--max-connections")) { if (!arg_int("serve", a, v, 1, 100000, &A->sp.max_connections)) return 2; }
        else if (!strcmp(a, "--timeout")) { if (!arg_int("serve", a, v, 1, 86400, &A->sp.timeout_s)) return 2; }
        else if (!strcmp(a, "-ctk") || !strcmp(a, "--cache-type-k")) { if (!arg_cache_type("serve", a, v, &A->sp.defaults.type_k)) return 2; }
        else if (!strcmp(a, "-ctv") || !strcmp(a, "--cache-type-v")) { if (!arg_cache_type("serve", a, v, &A->sp.defaults.type_v)) return 2; }
        else if (!strcmp(a, "--request-timeout")) { if (!arg_int("serve", a, v, 1, 86400, &A->sp.request_timeout_s)) return 2; }
        else if (!strcmp(a, "--max-conns-per-ip")) { if (!arg_int("serve", a, v, 1, 100000, &A->sp.max_conns_per_ip)) return 2; }
        else if (!strcmp(a, "--allowed-hosts")) A->sp.allowed_hosts = v;
        else if (!strcmp(a, "--cors-origin")) {
            /* repeated flags join into one comma list */
            size_t have = strlen(origins);
            if (have + strlen(v) + 2 > sizeof origins) {
                fprintf(stderr, "duet serve: --cors-origin lists are longer than %zu bytes\n", sizeof origins - 1);
                return 2;
            }
            snprintf(origins + have, sizeof origins - have, "%s%s", have ? "," : "", v);
            A->sp.cors_origins = origins;
        }
        else {
            fprintf(stderr, "duet serve: unknown option '%s'\n", a);
            serve_usage(stderr);
            return 2;
        }
    }
    return -1;
}

int cmd_serve(int argc, char **argv) {
    serve_args args = {.policy = -1, .port = 8080, .sp = {.host = "127.0.0.1"}};
    args.sp.defaults.threshold = -1;
    int st = parse_args(argc, argv, &args);
    if (st >= 0) return st;
    const char *model_path = args.model_path, *expert_path = args.expert_path,
               *head_path = args.head_path;
    int n_threads = args.n_threads, policy = args.policy, port = args.port, max_body = args.max_body;
    duet_server_params sp = args.sp;
    duet_expert_remote_params rp = args.rp;
    if (!model_path) {
        fprintf(stderr, "duet serve: -m MODEL is required\n");
        serve_usage(stderr);
        return 2;
    }
    if (expert_path && rp.url) {
        fprintf(stderr, "duet serve: give --expert or --expert-url, not both\n");
        return 2;
    }
    int has_expert = expert_path || rp.url;
    if (policy < 0) policy = !has_expert ? DUET_POLICY_BASE : head_path ? DUET_POLICY_COLLM : -1;
    if (policy < 0) {
        fprintf(stderr, "duet serve: with an expert, give --head (policy collm) or --policy NAME\n");
        return 2;
    }
    sp.defaults.policy = (duet_policy)policy;
    sp.port = port;
    sp.max_body = (size_t)max_body;
    sp.remote = rp.url ? &rp : NULL;
    duet_model *base = NULL, *expert = NULL;
    duet_head *head = NULL;
    duet_server *srv = NULL;
    duet_error err = {0};
    int rc = 1;
    if (cmd_eval_load("serve", model_path, expert_path, NULL, head_path, n_threads, &base, &expert,
                      NULL, &head))
        goto done;
    if (args.lora.n[1] && !expert) {
        fprintf(stderr, "duet serve: --expert-lora needs a local --expert\n");
        goto done;
    }
    if (lora_attach(&args.lora, 0, base, &err) || (expert && lora_attach(&args.lora, 1, expert, &err))) {
        fprintf(stderr, "duet serve: %s\n", err.msg);
        goto done;
    }
    sp.base = base;
    sp.expert = expert;
    sp.head = head;
    /* SIGINT/SIGTERM are taken by sigwait below: blocked before the server's threads start
     * (they inherit the mask), so no connection thread swallows them */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    if (duet_server_start(&sp, &srv, &err)) {
        fprintf(stderr, "duet serve: %s\n", err.msg);
        goto done;
    }
    /* the line scripts and tests wait for: the port is real even with --port 0 */
    fprintf(stderr, "duet serve: listening on http://%s:%d (model %s%s%s, policy %s, %d slot%s)\n",
            sp.host, duet_server_port(srv), duet_model_hparams(base)->name,
            has_expert ? ", expert " : "", expert ? duet_model_hparams(expert)->name : rp.url ? rp.url : "",
            duet_policy_name(policy), sp.n_slots ? sp.n_slots : 1, sp.n_slots > 1 ? "s" : "");
    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "duet serve: stopping (signal %d)\n", sig);
    rc = 0;
done:
    duet_server_stop(srv);
    duet_head_free(head);
    duet_model_free(expert);
    duet_model_free(base);
    lora_opts_free(&args.lora);
    return rc;
}
