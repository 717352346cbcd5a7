/* The C smoke test: the API used directly from C, as a C program would, against a running
 * longrun server (its base URL is argv[1]). Built and run by tests/smoke.rs. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "longrun.h"

#define S(lit) (const uint8_t *)(lit), strlen(lit)

static int failures = 0;

#define CHECK(cond, ...)                                                     \
  do {                                                                       \
    if (!(cond)) {                                                           \
      fprintf(stderr, "smoke.c:%d: check failed: %s: ", __LINE__, #cond);    \
      fprintf(stderr, __VA_ARGS__);                                          \
      fprintf(stderr, "\n");                                                 \
      failures++;                                                            \
    }                                                                        \
  } while (0)

static void print_error(const char *what, longrun_code code, const longrun_error *err) {
  size_t len = 0;
  const uint8_t *msg = longrun_error_message(err, &len);
  fprintf(stderr, "%s: %s: %.*s\n", what, longrun_code_name(code), (int)len, (const char *)msg);
}

static int equals(const uint8_t *ptr, size_t len, const char *want) {
  return ptr != NULL && len == strlen(want) && memcmp(ptr, want, len) == 0;
}

/* Drain a follow; return the number of events, checking that ids are dense from `first`. */
static size_t drain(longrun_events *events, uint64_t first, longrun_state *last_state) {
  size_t seen = 0;
  for (;;) {
    longrun_batch batch;
    longrun_error *err = NULL;
    longrun_code code = longrun_events_next(events, 64, 10000, NULL, &batch, &err);
    if (code != LONGRUN_CODE_OK) {
      print_error("next", code, err);
      longrun_error_free(err);
      failures++;
      return seen;
    }
    if (batch.next == LONGRUN_NEXT_END) return seen;
    CHECK(batch.next == LONGRUN_NEXT_EVENTS, "a 10 s timeout passed");
    for (size_t i = 0; i < batch.len; i++) {
      const longrun_event *ev = &batch.events[i];
      CHECK(ev->id == first + seen, "id %llu, expected %llu", (unsigned long long)ev->id,
            (unsigned long long)(first + seen));
      CHECK(ev->value_offset + ev->value_len <= batch.values_len, "value out of the batch");
      *last_state = ev->state;
      seen++;
    }
    longrun_batch_free(&batch);
    longrun_batch_free(&batch); /* a freed batch may be freed again */
  }
}

struct trigger_args {
  longrun_interrupt *interrupt;
};

static void *trigger_later(void *arg) {
  struct trigger_args *a = arg;
  /* The follow below blocks without a timeout; this thread wakes it. */
  struct timespec t = {0, 200 * 1000 * 1000};
  nanosleep(&t, NULL);
  longrun_interrupt_trigger(a->interrupt);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: smoke BASE_URL\n");
    return 2;
  }
  longrun_client *client = NULL;
  longrun_error *err = NULL;
  longrun_code code = longrun_client_new(S(argv[1]), S("{\"timeout_ms\": 10000}"), &client, &err);
  if (code != LONGRUN_CODE_OK) {
    print_error("client", code, err);
    return 1;
  }

  /* submit + follow to the end */
  longrun_run *run = NULL;
  code = longrun_client_submit(client, S("count"), S("{\"n\": 3}"), NULL, &run, &err);
  CHECK(code == LONGRUN_CODE_OK, "submit count: %s", longrun_code_name(code));
  size_t len = 0;
  const uint8_t *object = longrun_run_object(run, &len);
  CHECK(equals(object, len, "count"), "object");
  longrun_run_id(run, &len);
  CHECK(len == 36, "id length %zu", len);

  longrun_events *events = NULL;
  code = longrun_client_follow(client, run, NULL, LONGRUN_TRANSPORT_SSE, &events, &err);
  CHECK(code == LONGRUN_CODE_OK, "follow");
  longrun_state last = LONGRUN_STATE_QUEUED;
  size_t n = drain(events, 0, &last);
  CHECK(n == 5, "count n=3 gives 5 events, got %zu", n);
  CHECK(last == LONGRUN_STATE_SUCCESS, "ends in success, got %s", longrun_state_name(last));
  longrun_events_free(events);

  /* resume from a cursor by long polling, from a run rebuilt from its URL */
  const uint8_t *url = longrun_run_url(run, &len);
  longrun_run *again = NULL;
  code = longrun_run_from_url(url, len, &again, &err);
  CHECK(code == LONGRUN_CODE_OK, "from_url");
  const uint64_t two = 2;
  code = longrun_client_follow(client, again, &two, LONGRUN_TRANSPORT_POLL, &events, &err);
  CHECK(code == LONGRUN_CODE_OK, "follow from 2");
  n = drain(events, 3, &last);
  CHECK(n == 2, "events after 2: %zu", n);
  longrun_events_free(events);

  longrun_run_status status;
  code = longrun_client_status(client, again, NULL, &status, &err);
  CHECK(code == LONGRUN_CODE_OK && status.state == LONGRUN_STATE_SUCCESS && status.last_event_id == 4,
        "status");
  longrun_cancel_outcome outcome;
  code = longrun_client_cancel(client, again, NULL, &outcome, &err);
  CHECK(code == LONGRUN_CODE_OK && outcome.already_ended && outcome.state == LONGRUN_STATE_SUCCESS,
        "cancel of an ended run");
  longrun_run_free(again);
  longrun_run_free(run);

  /* wait: success value, and a failed run's value on the error */
  code = longrun_client_submit(client, S("echo"), S("{\"a\": [1, \"x\"]}"), NULL, &run, &err);
  CHECK(code == LONGRUN_CODE_OK, "submit echo");
  longrun_buf value = {0};
  code = longrun_client_wait(client, run, -1, NULL, &value, &err);
  CHECK(code == LONGRUN_CODE_OK && equals(value.ptr, value.len, "{\"a\":[1,\"x\"]}"), "echo value %.*s",
        (int)value.len, (const char *)value.ptr);
  longrun_buf_free(&value);
  longrun_run_free(run);

  code = longrun_client_submit(client, S("fail"), S("{\"message\": \"boom\"}"), NULL, &run, &err);
  CHECK(code == LONGRUN_CODE_OK, "submit fail");
  code = longrun_client_wait(client, run, -1, NULL, &value, &err);
  CHECK(code == LONGRUN_CODE_RUN_FAILED, "fail: %s", longrun_code_name(code));
  const uint8_t *failed = longrun_error_value(err, &len);
  CHECK(failed != NULL && len > 0 && strstr((const char *)failed, "boom") != NULL, "failed value");
  longrun_error_free(err);
  err = NULL;
  longrun_run_free(run);

  /* errors from the server: an unknown object */
  code = longrun_client_submit(client, S("nope"), NULL, 0, NULL, &run, &err);
  CHECK(code == LONGRUN_CODE_NOT_FOUND, "unknown object: %s", longrun_code_name(code));
  CHECK(longrun_error_status(err) == 404, "status 404");
  const uint8_t *problem = longrun_error_problem(err, &len);
  CHECK(problem != NULL && len > 0, "a problem");
  longrun_error_free(err);
  err = NULL;

  /* a sleeping run: a timeout, then an interrupt from another thread, then cancel */
  code = longrun_client_submit(client, S("sleep"), S("{\"ms\": 3600000}"), NULL, &run, &err);
  CHECK(code == LONGRUN_CODE_OK, "submit sleep");
  code = longrun_client_wait(client, run, 50, NULL, &value, &err);
  CHECK(code == LONGRUN_CODE_TIMEOUT, "wait 50 ms: %s", longrun_code_name(code));
  longrun_error_free(err);
  err = NULL;

  const uint64_t zero = 0;
  code = longrun_client_follow(client, run, &zero, LONGRUN_TRANSPORT_DEFAULT, &events, &err);
  CHECK(code == LONGRUN_CODE_OK, "follow sleep");
  longrun_batch batch;
  code = longrun_events_next(events, 16, 100, NULL, &batch, &err);
  CHECK(code == LONGRUN_CODE_OK && batch.next == LONGRUN_NEXT_PENDING, "pending");
  longrun_interrupt *interrupt = longrun_interrupt_new();
  struct trigger_args args = {interrupt};
  pthread_t thread;
  pthread_create(&thread, NULL, trigger_later, &args);
  code = longrun_events_next(events, 16, -1, interrupt, &batch, &err);
  CHECK(code == LONGRUN_CODE_INTERRUPTED, "interrupted: %s", longrun_code_name(code));
  longrun_error_free(err);
  err = NULL;
  pthread_join(thread, NULL);
  longrun_interrupt_free(interrupt);

  code = longrun_client_cancel(client, run, NULL, &outcome, &err);
  CHECK(code == LONGRUN_CODE_OK && !outcome.already_ended, "cancel accepted");
  /* the interrupted follow carries on where it was: the canceled event comes next */
  n = drain(events, 1, &last);
  CHECK(n == 1 && last == LONGRUN_STATE_CANCELED, "canceled after the interrupt: %zu %s", n,
        longrun_state_name(last));
  longrun_events_free(events);
  longrun_run_free(run);

  /* NULL everywhere is allowed by the free functions */
  longrun_events_free(NULL);
  longrun_run_free(NULL);
  longrun_client_free(NULL);
  longrun_error_free(NULL);
  longrun_interrupt_free(NULL);
  longrun_buf_free(NULL);
  longrun_batch_free(NULL);

  longrun_client_free(client);
  if (failures) {
    fprintf(stderr, "smoke: %d failed checks\n", failures);
    return 1;
  }
  printf("smoke: ok\n");
  return 0;
}
