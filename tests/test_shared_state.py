"""Three ``routegate serve`` replicas sharing one real Redis (``ROUTEGATE_REDIS_URL``): the daily
budget, the target routes, sticky conversations and scores hold across replicas, and a Redis
crash fails no request.

Each replica is its own process with its own in-process state: without Redis, each spends the
whole budget, sends 30% of its own slice of a target route, and forgets conversations that went
strong on another replica (each test below fails then).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from openai import OpenAI
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import Proxy, proxy_env, running_proxy
from tests.fake_judge import FakeJudge
from tests.fake_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, FakeUpstream, free_port
from tests.metric_values import wait_for
from tests.metrics_text import metric_sum
from tests.postgres_server import running_postgres
from tests.redis_server import RedisServer, running_redis

STRONG_COST = (PROMPT_TOKENS * 10 + COMPLETION_TOKENS * 30) / 1e6  # proxy_env's strong prices
ALWAYS_STRONG = "router-random-0"
ALWAYS_WEAK = "router-random-1"
REDIS_TIMEOUT_MS = "2000"  # these tests are about sharing: a loaded machine must not time out a healthy Redis


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@contextmanager
def replicas(env: dict[str, str], tmp_path: Path, count: int = 3, module: str = "server.cli") -> Iterator[list[Proxy]]:
    """``count`` routegate processes started with the same settings."""
    with ExitStack() as stack:
        yield [stack.enter_context(running_proxy(env, tmp_path, module=module)) for _ in range(count)]


def standin_env(
    redis_server: RedisServer, strong: FakeUpstream, weak: FakeUpstream, checkpoints: Path, **settings: str
) -> dict[str, str]:
    """Settings of a replica with the stand-in router (scores follow the prompt), sticky
    conversations and the shared score cache."""
    (checkpoints / "standin").mkdir(parents=True, exist_ok=True)  # the stand-in router needs no checkpoint, only its folder
    return proxy_env(
        strong,
        weak,
        redis_url=redis_server.url,
        redis_prefix="trio:",
        redis_timeout_ms=REDIS_TIMEOUT_MS,
        redis_retry_seconds="0.5",
        shared_score_cache="true",
        route_on="sticky",
        checkpoint_dir=str(checkpoints),
        router="standin",
        routers='["random"]',  # clients may name both
        target_window="300",
        daily_budget_usd="1000",  # far more than these tests spend: counted, never binding
        **settings,
    )


@pytest.fixture(scope="module")
def trio(
    redis_server: RedisServer, strong: FakeUpstream, weak: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Proxy]]:
    """Three replicas with the same settings (``standin_env``)."""
    env = standin_env(redis_server, strong, weak, tmp_path_factory.mktemp("checkpoints"))
    with replicas(env, tmp_path_factory.mktemp("trio"), module="tests.standin_router") as proxies:
        yield proxies


def _ask(proxy: Proxy, model: str, messages: list[dict], conversation_id: str | None = None) -> tuple[httpx.Headers, str]:
    """The decision headers and the answer of one request."""
    client = OpenAI(base_url=proxy.api, api_key="unused", max_retries=0)
    headers = {"x-routegate-conversation-id": conversation_id} if conversation_id else None
    raw = client.chat.completions.with_raw_response.create(model=model, messages=messages, extra_headers=headers)
    return raw.headers, raw.parse().choices[0].message.content


def _route_keys(redis: redis.Redis, prefix: str, share: str) -> list[str]:
    """The Redis key stems of a share's target routes: ``<prefix>target:{<router>-<digest>:<share>}``."""
    return sorted(key.removesuffix(":scores") for key in redis.keys(f"{prefix}target:{{*:{share}}}:scores"))


def _hard(index: int) -> str:
    return f"Compute {index}*{index + 7}+{3 * index}=?"  # math-heavy: the stand-in router scores it 0.6-1


def _easy(index: int, topic: str) -> str:
    letters = "".join(chr(ord("a") + int(digit)) for digit in str(index))
    return f"Tell me a short story about a {topic} called {letters}."  # no math: scored 0-0.4


def test_gateways_scoring_other_pairs_keep_target_routes_of_their_own(
    redis_server: RedisServer, strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    """Two gateways on one Redis and prefix, routing other strong models (or a rolling deploy of a
    retrained checkpoint): a router's scores for one pair are on another scale than for the other,
    so the same share's window is not mixed (the score cache keeps them apart the same way:
    ``test_a_gateway_scoring_another_pair_does_not_read_the_shared_scores``)."""
    client = redis_server.client()
    with ExitStack() as stack:
        for index, strong_model in enumerate(("strong-model-a", "strong-model-b")):
            env = proxy_env(
                strong,
                weak,
                redis_url=redis_server.url,
                redis_prefix="pairs:",
                redis_timeout_ms=REDIS_TIMEOUT_MS,
                strong__model=strong_model,
            )
            (tmp_path / str(index)).mkdir()
            proxy = stack.enter_context(running_proxy(env, tmp_path / str(index)))
            _ask(proxy, "router-random-50%", [{"role": "user", "content": f"question {index}"}])
    routes = _route_keys(client, "pairs:", "0.5")
    assert len(routes) == 2
    assert [client.zcard(f"{route}:scores") for route in routes] == [1, 1]


def test_spend_redis_missed_is_sent_when_the_replica_stops(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    """A strong answer while Redis was down is this replica's alone until its next budget
    operation; a replica stopped before one (scaled down, a rolling update) sends it as it stops."""
    with running_redis(tmp_path / "redis") as server:
        env = proxy_env(strong, weak, redis_url=server.url, redis_prefix="flush:", daily_budget_usd="100")
        with running_proxy(env, tmp_path) as proxy:
            server.kill()
            headers, _ = _ask(proxy, ALWAYS_STRONG, [{"role": "user", "content": "while Redis is down"}])
            assert headers["x-routegate-tier"] == "strong"
            server.start()  # empty: a restart without persistence
            time.sleep(1.5)  # past ROUTEGATE_REDIS_RETRY_SECONDS: the flush may try Redis again
        budget = server.client().hgetall(f"flush:budget:{datetime.now(UTC):%Y-%m-%d}")
    assert float(budget["spent"]) == pytest.approx(STRONG_COST, abs=1e-12)
    assert budget["priced"] == "1"


def test_spend_redis_missed_is_sent_when_the_replica_stops_with_its_feedback_database_hung(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    """The feedback store's last write waits on a PostgreSQL that does not answer (its backend
    stopped): it may use the cleanup's time, but not the part that sends the unsent spend."""
    import os
    import signal

    import psycopg

    with running_postgres() as database, running_redis(tmp_path / "redis") as server:
        env = proxy_env(strong, weak, redis_url=server.url, redis_prefix="hung:", daily_budget_usd="100", feedback_db=database)
        with running_proxy(env, tmp_path) as proxy, psycopg.connect(database, autocommit=True) as admin:
            _ask(proxy, ALWAYS_WEAK, [{"role": "user", "content": "while the database answers"}])
            _wait(lambda: _count(admin, "routegate_decisions") == 1, "the first decision row")
            backends = [
                pid
                for (pid,) in admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                )
            ]
            assert backends, "the gateway's store holds a connection"
            for pid in backends:
                os.kill(pid, signal.SIGSTOP)  # its writes now wait without an answer
            try:
                server.kill()
                headers, _ = _ask(proxy, ALWAYS_STRONG, [{"role": "user", "content": "while Redis is down"}])
                assert headers["x-routegate-tier"] == "strong"
                server.start()
                time.sleep(1.5)  # past ROUTEGATE_REDIS_RETRY_SECONDS: the flush may try Redis again
                proxy.process.terminate()
                proxy.process.wait(timeout=30)
            finally:
                for pid in backends:
                    os.kill(pid, signal.SIGCONT)
        budget = server.client().hgetall(f"hung:budget:{datetime.now(UTC):%Y-%m-%d}")
    assert float(budget["spent"]) == pytest.approx(STRONG_COST, abs=1e-12)


def _count(connection: Any, table: str) -> int:
    try:
        return connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    except Exception:  # no table yet
        return 0


def test_an_idle_replica_reports_redis_up_again_once_it_answers(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    """Without requests after an outage, a replica tries Redis on its own: its gauge (and the
    alert on it) follows Redis, not its traffic."""
    with running_redis(tmp_path / "redis") as server:
        env = proxy_env(strong, weak, redis_url=server.url, redis_prefix="probe:", route_on="sticky")
        with running_proxy(env, tmp_path) as proxy:
            server.kill()
            _ask(proxy, ALWAYS_STRONG, [{"role": "user", "content": "while Redis is down"}], conversation_id="c")
            assert metric_sum(proxy.metrics(), "routegate_shared_state_up") == 0
            server.start()
            _wait(lambda: metric_sum(proxy.metrics(), "routegate_shared_state_up") == 1, "Redis up again", timeout=10)


def test_an_idle_replica_reports_a_redis_it_cannot_reach_as_down(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    """A wrong Redis URL, or a Redis that goes away while no request comes: the gauge says so
    without waiting for traffic."""
    env = proxy_env(strong, weak, redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_prefix="idle:")
    (tmp_path / "never").mkdir()
    (tmp_path / "gone").mkdir()
    with running_proxy(env, tmp_path / "never") as proxy:
        _wait(lambda: metric_sum(proxy.metrics(), "routegate_shared_state_up") == 0, "Redis never reached", timeout=10)
    with running_redis(tmp_path / "redis") as server:
        env = proxy_env(strong, weak, redis_url=server.url, redis_prefix="idle:")
        with running_proxy(env, tmp_path / "gone") as proxy:
            assert metric_sum(proxy.metrics(), "routegate_shared_state_up") == 1
            server.kill()
            _wait(lambda: metric_sum(proxy.metrics(), "routegate_shared_state_up") == 0, "Redis gone", timeout=10)
            server.start()
            _wait(lambda: metric_sum(proxy.metrics(), "routegate_shared_state_up") == 1, "Redis back", timeout=10)


def test_daily_budget_holds_across_replicas(
    redis_server: RedisServer, strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    """A budget of 1.5 strong answers: each replica alone would spend its first request on the
    strong tier (3 answers, 2x the budget); shared, the first strong answer's cost is seen by all."""
    budget = 1.5 * STRONG_COST
    env = proxy_env(
        strong,
        weak,
        redis_url=redis_server.url,
        redis_prefix="budget:",
        redis_timeout_ms=REDIS_TIMEOUT_MS,
        daily_budget_usd=f"{budget!r}",
    )
    with replicas(env, tmp_path) as proxies:
        tiers = [
            _ask(proxy, "router-random-100%", [{"role": "user", "content": f"question {index}"}])[0]["x-routegate-tier"]
            for index, proxy in zip(range(30), itertools.cycle(proxies))  # one at a time, round robin
        ]
        remaining = [metric_sum(proxy.metrics(), "routegate_budget_remaining_usd") for proxy in proxies]
        with running_proxy(env, tmp_path) as late:  # started after the spending, asked nothing yet
            remaining.append(metric_sum(late.metrics(), "routegate_budget_remaining_usd"))
    spent = len(strong.received) * STRONG_COST
    assert tiers.count("strong") == len(strong.received) >= 1
    assert spent <= budget + STRONG_COST, f"{len(strong.received)} strong answers for a budget of 1.5"
    assert remaining == pytest.approx([budget - spent] * 4, abs=1e-12)  # every replica sees all spend
    assert any(key.startswith("budget:budget:") for key in redis_server.client().scan_iter("budget:*"))


def test_the_shadow_budget_holds_across_replicas(
    redis_server: RedisServer, strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    """A shadow budget smaller than one shadow call: the first replica's shadow call spends it, so
    the second replica skips its first job without calling; in-process each would make its own."""
    judge = FakeJudge().start()
    env = proxy_env(
        strong,
        weak,
        redis_url=redis_server.url,
        redis_prefix="shadow:",
        redis_timeout_ms=REDIS_TIMEOUT_MS,
        shadow_rate="1",
        feedback_db="off",
        judge__base_url=judge.url,
        judge__model="fake-judge",
        shadow_daily_budget_usd=f"{STRONG_COST / 2!r}",
    )
    try:
        with replicas(env, tmp_path, count=2) as proxies:
            for index, proxy in enumerate(proxies):  # answered weak, shadowed on the strong tier
                _ask(proxy, ALWAYS_WEAK, [{"role": "user", "content": f"question {index}"}])
                assert wait_for(lambda proxy=proxy: metric_sum(proxy.metrics(), "routegate_shadow_requests_total") == 1)
            over_budget = [
                metric_sum(proxy.metrics(), "routegate_shadow_requests_total", outcome="over_budget") for proxy in proxies
            ]
    finally:
        judge.stop()
    shadow_calls = [received for received in strong.received if received.headers.get("x-routegate-shadow") == "1"]
    assert len(shadow_calls) == 1  # the second replica knew the budget was spent
    assert over_budget == [1, 1]  # the first after its call, the second before any
    assert judge.received == []
    assert any(key.startswith("shadow:shadow_budget:") for key in redis_server.client().scan_iter("shadow:*"))


def test_target_route_is_one_controller_over_all_replicas(trio: list[Proxy], strong: FakeUpstream) -> None:
    """Replica 1 gets the hard prompts, replicas 2 and 3 easy ones. One shared threshold sends ~30%
    of all requests strong, nearly all of them replica 1's; three separate controllers would each
    send 30% of their own slice (easy prompts included)."""
    rounds = 120
    decisions: list[tuple[int, str]] = []
    for index in range(rounds):
        for replica, prompt in enumerate([_hard(index), _easy(index, "cat"), _easy(index, "dog")]):
            headers, _ = _ask(trio[replica], "router-standin-30%", [{"role": "user", "content": prompt}])
            assert headers["x-routegate-decision"] == "score"
            decisions.append((replica, headers["x-routegate-tier"]))
    last = decisions[-300:]
    overall = sum(tier == "strong" for _, tier in last) / len(last)
    by_replica = [sum(tier == "strong" for replica, tier in last if replica == wanted) / 100 for wanted in range(3)]
    assert abs(overall - 0.30) <= 0.03, (overall, by_replica)
    assert by_replica[0] >= 0.8 and by_replica[1] <= 0.05 and by_replica[2] <= 0.05, by_replica
    for proxy in trio:  # each replica reports the route's realised share over all replicas' decisions
        realised = metric_sum(proxy.metrics(), "routegate_target_realised_share", router="standin", target="0.3")
        assert abs(realised - 0.30) <= 0.03, realised


def test_sticky_conversation_follows_across_replicas(trio: list[Proxy]) -> None:
    first = [{"role": "user", "content": "Prove that there are infinitely many primes."}]
    headers, answer = _ask(trio[0], ALWAYS_STRONG, first)
    assert (headers["x-routegate-tier"], headers["x-routegate-decision"]) == ("strong", "score")
    follow_up = [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "And twin primes?"}]
    headers, _ = _ask(trio[2], ALWAYS_WEAK, follow_up)
    assert (headers["x-routegate-tier"], headers["x-routegate-decision"]) == ("strong", "sticky")

    headers, _ = _ask(trio[1], ALWAYS_STRONG, [{"role": "user", "content": "hello"}], conversation_id="shared-42")
    assert headers["x-routegate-tier"] == "strong"
    headers, _ = _ask(trio[2], ALWAYS_WEAK, [{"role": "user", "content": "again"}], conversation_id="shared-42")
    assert (headers["x-routegate-tier"], headers["x-routegate-decision"]) == ("strong", "sticky")

    weak_first = [{"role": "user", "content": "What is the capital of France?"}]
    headers, answer = _ask(trio[0], ALWAYS_WEAK, weak_first)
    assert headers["x-routegate-tier"] == "weak"
    follow_up = [*weak_first, {"role": "assistant", "content": answer}, {"role": "user", "content": "And Spain?"}]
    headers, _ = _ask(trio[2], ALWAYS_WEAK, follow_up)
    assert (headers["x-routegate-tier"], headers["x-routegate-decision"]) == ("weak", "score")


def test_a_score_is_computed_once_for_all_replicas(trio: list[Proxy], redis_server: RedisServer) -> None:
    prompt = [{"role": "user", "content": "Integrate x^2 * sin(x) from 0 to 3."}]
    first, _ = _ask(trio[0], "router-standin-0.5", prompt)
    client = redis_server.client()
    # kept no longer than a sticky conversation (ROUTEGATE_STICKY_TTL_SECONDS, 1 h): volatile-ttl evicts the cache first
    assert 0 < max(client.ttl(key) for key in client.scan_iter("*score:standin-*")) <= 3600
    hits = metric_sum(trio[1].metrics(), "routegate_score_cache_lookups_total", result="hit")
    second, _ = _ask(trio[1], "router-standin-0.5", prompt)
    assert second["x-routegate-score"] == first["x-routegate-score"]
    assert metric_sum(trio[1].metrics(), "routegate_score_cache_lookups_total", result="hit") == hits + 1


def test_a_gateway_scoring_another_pair_does_not_read_the_shared_scores(
    trio: list[Proxy], redis_server: RedisServer, strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    """Same Redis, same prefix, same router: a gateway told to score another pair (or serving a
    retrained checkpoint) scores the text itself instead of taking the trio's score."""
    prompt = [{"role": "user", "content": "Differentiate x^3 * cos(x) twice."}]
    _ask(trio[0], "router-standin-0.5", prompt)
    other_pair = standin_env(
        redis_server, strong, weak, tmp_path / "checkpoints", router_strong_model="gpt-4o", router_weak_model="gpt-4o-mini"
    )
    retrained = standin_env(redis_server, strong, weak, tmp_path / "retrained")
    (tmp_path / "retrained" / "standin" / "router.json").write_text('{"router": "standin"}')
    for env in (other_pair, retrained):
        with running_proxy(env, tmp_path, module="tests.standin_router") as other:
            _ask(other, "router-standin-0.5", prompt)
            assert metric_sum(other.metrics(), "routegate_score_cache_lookups_total", result="hit") == 0
            assert metric_sum(other.metrics(), "routegate_score_cache_lookups_total", result="miss") == 1


def test_concurrent_requests_add_up_exactly(trio: list[Proxy], redis_server: RedisServer, strong: FakeUpstream) -> None:
    """Spend and request counts from many requests at once on three replicas: none lost, none twice."""
    redis = redis_server.client()
    key = f"trio:budget:{datetime.now(UTC):%Y-%m-%d}"
    before = {"requests": "0", "spent": "0", "priced": "0", **redis.hgetall(key)}

    def one(index: int) -> None:
        _ask(trio[index % 3], "router-random-50%", [{"role": "user", "content": f"concurrent {index}"}])

    with ThreadPoolExecutor(max_workers=12) as pool:
        list(pool.map(one, range(90)))
    after = redis.hgetall(key)
    assert int(after["requests"]) - int(before["requests"]) == 90
    assert float(after["spent"]) - float(before["spent"]) == pytest.approx(len(strong.received) * STRONG_COST, abs=1e-12)
    assert int(after["priced"]) - int(before["priced"]) == 90
    assert 10 <= len(strong.received) <= 80


def test_a_stalled_redis_costs_a_timeout_not_a_request(trio: list[Proxy], redis_server: RedisServer) -> None:
    def tier(index: int) -> str:
        return _ask(trio[index], "router-standin-30%", [{"role": "user", "content": _hard(20_000 + index)}])[0][
            "x-routegate-tier"
        ]

    before = [_redis_errors(proxy) for proxy in trio]
    with ThreadPoolExecutor(max_workers=4) as pool:
        stall = pool.submit(redis_server.client().execute_command, "DEBUG", "SLEEP", "4")  # twice the replicas' timeout
        _wait(lambda: _stalled(redis_server), "Redis to stall")
        tiers = list(pool.map(tier, range(3)))  # at once: each replica's first Redis call falls in the stall
        stall.result()
    assert set(tiers) <= {"strong", "weak"}  # each replica answered, deciding on its own
    assert all(_redis_errors(proxy) > count for proxy, count in zip(trio, before, strict=True))
    assert all("TimeoutError" in proxy.log() for proxy in trio)


def _redis_errors(*proxies: Proxy) -> float:
    """Failed Redis operations the replicas counted (``routegate_shared_state_errors_total``)."""
    return sum(metric_sum(proxy.metrics(), "routegate_shared_state_errors_total") for proxy in proxies)


def _stalled(server: RedisServer) -> bool:
    """Whether Redis leaves a PING unanswered for 0.1 s."""
    client = redis.Redis(
        host="127.0.0.1", port=server.port, password=server.password, socket_timeout=0.1, retry=Retry(NoBackoff(), 0)
    )
    try:
        client.ping()
    except redis.TimeoutError:
        return True
    finally:
        client.close()
    return False


def _load(proxies: list[Proxy], stop: threading.Event, failures: list[str], done: list[int]) -> None:
    """Requests round robin until ``stop``: target-route questions and two-turn sticky conversations."""
    for index in itertools.count():
        if stop.is_set():
            return
        proxy = proxies[index % len(proxies)]
        try:
            if index % 2:
                _ask(proxy, "router-standin-30%", [{"role": "user", "content": _hard(10_000 + index)}])
            else:
                conversation = f"outage-{index}"
                _ask(proxy, ALWAYS_STRONG, [{"role": "user", "content": "hi"}], conversation_id=conversation)
                follow_up = [{"role": "user", "content": "so?"}]
                _ask(proxies[(index + 1) % len(proxies)], ALWAYS_WEAK, follow_up, conversation_id=conversation)
            done.append(index)
        except openai.OpenAIError as error:  # every failure is the test's finding
            failures.append(f"{type(error).__name__}: {error}")


def _wait(condition, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _sticky_across(first: Proxy, second: Proxy, attempts: int = 5) -> tuple[tuple[str, str], str]:
    """The decision ``second`` makes on a conversation that went strong on ``first``, and the
    conversation's id. An attempt during which either replica counted a Redis error (a timeout on
    a loaded machine rests Redis for a moment) is repeated with a new conversation."""
    for attempt in range(attempts):
        time.sleep(1)  # past ROUTEGATE_REDIS_RETRY_SECONDS: a rest after an earlier failure is over
        conversation, before = f"after-restart-{attempt}", _redis_errors(first, second)
        headers, _ = _ask(first, ALWAYS_STRONG, [{"role": "user", "content": "after"}], conversation_id=conversation)
        assert headers["x-routegate-tier"] == "strong"
        headers, _ = _ask(second, ALWAYS_WEAK, [{"role": "user", "content": "still?"}], conversation_id=conversation)
        if _redis_errors(first, second) == before:
            return (headers["x-routegate-tier"], headers["x-routegate-decision"]), conversation
    raise AssertionError(f"Redis failed during each of {attempts} attempts")


def test_redis_crash_fails_no_request_and_sharing_resumes(trio: list[Proxy], redis_server: RedisServer) -> None:
    def up(proxy: Proxy) -> float:
        return metric_sum(proxy.metrics(), "routegate_shared_state_up")

    errors_before = _redis_errors(*trio)
    stop, failures, done = threading.Event(), [], []
    with ThreadPoolExecutor(max_workers=3) as pool:
        loads = [pool.submit(_load, trio[offset:] + trio[:offset], stop, failures, done) for offset in range(3)]
        try:
            _wait(lambda: len(done) >= 20, "requests before the crash")
            redis_server.kill()
            _wait(lambda: all(up(proxy) == 0 for proxy in trio), "every replica to see Redis down")
            assert all(httpx.get(f"{proxy.url}/ready").status_code == 200 for proxy in trio)
            during = len(done)
            _wait(lambda: len(done) >= during + 20, "requests while Redis is down")
            redis_server.start()
            _wait(lambda: all(up(proxy) == 1 for proxy in trio), "every replica to use Redis again")
            after = len(done)
            _wait(lambda: len(done) >= after + 20, "requests after the restart")
        finally:
            stop.set()
        for load in loads:
            load.result()
    assert failures == []
    assert _redis_errors(*trio) > errors_before

    decision, conversation = _sticky_across(trio[0], trio[2])
    assert decision == ("strong", "sticky")
    assert redis_server.client().exists(f"trio:sticky:id:{conversation}")
    for proxy in trio:
        log = proxy.log()
        failed_at = [
            datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            for line in log.splitlines()
            if "shared state: Redis failed" in line
        ]
        assert failed_at and all(later - earlier >= timedelta(seconds=60) for earlier, later in itertools.pairwise(failed_at))
        assert _redis_errors(proxy) > len(failed_at)  # one message per interval
        assert "shared state: Redis answers again" in log
        assert redis_server.password not in log and redis_server.password not in proxy.metrics()


def test_shared_books_are_written_once_from_answered_requests(
    redis_server: RedisServer, strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    """Deciding only reads Redis: a request the upstream refused leaves no score in the route's
    window, no decision, no sticky conversation and no budget count; an answered one leaves each once."""
    env = proxy_env(
        strong,
        weak,
        redis_url=redis_server.url,
        redis_prefix="once:",
        redis_timeout_ms=REDIS_TIMEOUT_MS,
        route_on="sticky",
        daily_budget_usd="100",
        fallback="false",
    )
    redis = redis_server.client()
    budget = f"once:budget:{datetime.now(UTC):%Y-%m-%d}"
    with running_proxy(env, tmp_path) as proxy:
        strong.behaviour.fail_statuses = [400]
        with pytest.raises(openai.BadRequestError):
            _ask(proxy, "router-random-100%", [{"role": "user", "content": "refused"}], conversation_id="refused")
        assert not redis.keys("once:target:*") and not redis.exists("once:sticky:id:refused")
        assert redis.hget(budget, "requests") is None

        headers, _ = _ask(proxy, "router-random-100%", [{"role": "user", "content": "answered"}], conversation_id="answered")
        assert headers["x-routegate-tier"] == "strong"
        [route] = _route_keys(redis, "once:", "1")
        assert route.startswith("once:target:{random-")  # the router's shared name: scorer_identity
        assert [float(score) for _, score in redis.zrange(f"{route}:scores", 0, -1, withscores=True)] == [
            pytest.approx(float(headers["x-routegate-score"]), abs=1e-6)
        ]
        assert redis.lrange(f"{route}:recent", 0, -1) == ["1"]
        assert redis.exists("once:sticky:id:answered")
        assert redis.hget(budget, "requests") == "1"
        assert float(redis.hget(budget, "spent")) == pytest.approx(STRONG_COST, abs=1e-12)
        assert redis.hget(budget, "priced") == "1"

        strong.behaviour.malformed_json = True  # 2xx answers that are not JSON: tries the upstream may bill
        with pytest.raises(openai.APIStatusError):
            _ask(proxy, "router-random-0.0", [{"role": "user", "content": "never answered"}])  # strong, whatever its score
        deadline = time.monotonic() + 10  # the books are kept once the answer is out
        while float(redis.hget(budget, "spent")) <= STRONG_COST and time.monotonic() < deadline:
            time.sleep(0.05)
        assert float(redis.hget(budget, "spent")) > STRONG_COST  # the failed tries are spend
        assert (redis.hget(budget, "requests"), redis.hget(budget, "priced")) == ("1", "1")  # but not requests' prices


async def test_a_smaller_window_setting_shrinks_the_shared_window(redis_server: RedisServer, tmp_path: Path) -> None:
    from server.shared_state import SharedState
    from server.shared_targets import SharedTargets
    from server.targets import Targets

    state = SharedState(redis_server.url, "shrink:", 2.0, 1.0, 4)
    wide, narrow = (
        SharedTargets(Targets(window=window, feedback_horizon=50, checkpoint_dir=tmp_path), state) for window in (40, 10)
    )
    for number in range(40):  # a replica of the old release, window 40
        await wide.record("random", 0.3, 0.3, strong=number % 2 == 0, score=number / 40)
    await narrow.record("random", 0.3, 0.3, strong=False, score=0.5)  # after a deploy that set window 10
    await state.aclose()
    keys = {part: f"shrink:target:{{random:0.3}}:{part}" for part in ("scores", "order", "state", "recent")}
    client = redis_server.client()
    assert client.zcard(keys["scores"]) == 10 and client.llen(keys["order"]) == 10 and client.llen(keys["recent"]) == 10
    recent = client.lrange(keys["recent"], 0, -1)
    assert int(client.hget(keys["state"], "strong")) == recent.count("1") == 4  # 0/1 alternating, then the weak one


async def test_spend_sent_again_after_a_timeout_is_added_once(redis_server: RedisServer) -> None:
    import asyncio

    from server.shared_state import SharedState
    from server.shared_targets import SharedBudget
    from server.targets import DailyBudget

    state = SharedState(redis_server.url, "resent:", 0.25, 0.2, 4)
    budget = SharedBudget(DailyBudget(100.0), state)
    await budget.record_cost("strong", 0.5, 1.0)
    stall = threading.Thread(target=lambda: redis_server.client().execute_command("DEBUG", "SLEEP", "2"))
    stall.start()  # Redis busy past the 250 ms timeout: it runs the next script after routegate gave up on it
    _wait(lambda: _stalled(redis_server) and _stalled(redis_server), "Redis to stall")  # twice: not a slow PING
    await budget.record_cost("strong", 1.0, 1.0)
    assert not state.up  # the batch timed out: refresh below sends it again
    stall.join()
    await asyncio.sleep(0.3)  # past the rest after the failure
    await budget.refresh()  # sends the timed-out batch again
    await state.aclose()
    [key] = redis_server.client().keys("resent:budget:*")
    totals = redis_server.client().hgetall(key)
    assert float(totals["spent"]) == 1.5 and int(totals["priced"]) == 2  # not 2.5 and 3
    assert budget.local.spent_usd == 1.5


async def test_a_late_reply_does_not_take_the_budget_back_to_older_totals(redis_server: RedisServer) -> None:
    import asyncio

    from server.shared_state import SharedState
    from server.shared_targets import SharedBudget
    from server.targets import DailyBudget

    state = SharedState(redis_server.url, "late:", 2.0, 0.2, 4)
    budget = SharedBudget(DailyBudget(100.0), state)
    add, first = budget._add, asyncio.Event()

    async def slow_first_reply(**kwargs: object) -> object:
        """Redis adds at once; the first reply reaches this replica after the second one's."""
        totals = await add(**kwargs)
        if not first.is_set():
            first.set()
            await asyncio.sleep(0.3)
        return totals

    budget._add = slow_first_reply
    earlier = asyncio.create_task(budget.record_cost("strong", 1.0, 1.0))
    await first.wait()
    await budget.record_cost("strong", 2.0, 2.0)  # Redis's reply: 3.0 spent
    await earlier  # its reply says 1.0 spent
    await state.aclose()
    [key] = redis_server.client().keys("late:budget:*")
    assert float(redis_server.client().hget(key, "spent")) == 3.0
    assert budget.local.spent_usd == 3.0 and budget.remaining_usd == 97.0


async def test_a_route_whose_keys_were_evicted_one_by_one_is_repaired(redis_server: RedisServer, tmp_path: Path) -> None:
    from server.shared_state import SharedState
    from server.shared_targets import SharedTargets
    from server.targets import Targets

    state = SharedState(redis_server.url, "evicted:", 2.0, 1.0, 4)
    targets = SharedTargets(Targets(window=50, feedback_horizon=50, checkpoint_dir=tmp_path), state)
    keys = {part: f"evicted:target:{{random:0.3}}:{part}" for part in ("scores", "order", "state", "recent")}
    client = redis_server.client()

    async def record(count: int, strong: bool) -> None:
        for number in range(count):
            await targets.record("random", 0.3, 0.3, strong=strong, score=number / count)

    await record(20, strong=True)
    client.delete(keys["order"])  # the sorted set's members could never leave it again
    await record(30, strong=False)
    assert client.zcard(keys["scores"]) == client.llen(keys["order"]) == 30
    client.delete(keys["recent"])  # the strong count (20) would outlive the decisions it counted
    await record(10, strong=False)
    assert int(client.hget(keys["state"], "strong")) == 0 and targets.realised_share("random", 0.3) == 0.0
    await record(5, strong=True)
    client.delete(keys["state"])  # the count itself
    await record(1, strong=False)
    assert int(client.hget(keys["state"], "strong")) == client.lrange(keys["recent"], 0, -1).count("1") == 5
    await state.aclose()


async def test_a_window_whose_route_state_was_evicted_keeps_its_scores(redis_server: RedisServer, tmp_path: Path) -> None:
    """The route state holds the counter that names each score in the window: evicted alone, the
    counter must not start again at ids the window still holds (the new scores would overwrite
    old ones and then be trimmed with them, emptying the window for a window's worth of requests)."""
    from server.shared_state import SharedState
    from server.shared_targets import SharedTargets
    from server.targets import Targets

    state = SharedState(redis_server.url, "counter:", 2.0, 1.0, 4)
    targets = SharedTargets(Targets(window=10, feedback_horizon=50, checkpoint_dir=tmp_path), state)
    keys = {part: f"counter:target:{{random:0.3}}:{part}" for part in ("scores", "order", "state", "recent")}
    client = redis_server.client()
    for number in range(10):
        await targets.record("random", 0.3, 0.3, strong=False, score=number / 100)
    client.delete(keys["state"])
    for number in range(5):
        await targets.record("random", 0.3, 0.3, strong=False, score=0.5 + number / 100)
    order = client.lrange(keys["order"], 0, -1)
    assert len(order) == len(set(order)) == client.zcard(keys["scores"]) == 10
    assert sorted(float(score) for _, score in client.zrange(keys["scores"], 0, -1, withscores=True)) == pytest.approx(
        [0.05, 0.06, 0.07, 0.08, 0.09, 0.5, 0.51, 0.52, 0.53, 0.54]
    )  # the five newest and the five before them
    await state.aclose()


async def test_a_full_share_route_decided_in_redis_sends_every_score_strong(redis_server: RedisServer, tmp_path: Path) -> None:
    """router-<router>-100% through Redis: a threshold at or below every score, not the window's lowest."""
    from server.shared_state import SharedState
    from server.shared_targets import SharedTargets
    from server.targets import Targets

    state = SharedState(redis_server.url, "full:", 0.25, 5.0, 4)
    targets = SharedTargets(Targets(window=100, feedback_horizon=50, checkpoint_dir=tmp_path), state)
    for number in range(20):
        await targets.record("random", 1.0, 1.0, strong=True, score=0.5 + number / 100)
    decision = await targets.decide("random", 1.0)
    assert state.up  # decided by Redis
    await state.aclose()
    assert decision.threshold == 0.0


async def test_a_replica_falling_back_from_redis_owes_nothing_for_the_shared_decisions(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Redis's controller sent none of this replica's (easy) prompts strong; when Redis stalls, the
    replica's own controller aims at the route's share of its own window, not at all of it."""

    from server.shared_state import SharedState
    from server.shared_targets import SharedTargets
    from server.targets import Targets

    state = SharedState(redis_server.url, "owed:", 0.25, 5.0, 4)
    targets = SharedTargets(Targets(window=100, feedback_horizon=50, checkpoint_dir=tmp_path), state)
    assert (await targets.decide("random", 0.3)).threshold > 0
    for number in range(100):
        await targets.record("random", 0.3, 0.3, strong=False, score=number / 100)
    stall = threading.Thread(target=lambda: redis_server.client().execute_command("DEBUG", "SLEEP", "2"))
    stall.start()
    _wait(lambda: _stalled(redis_server) and _stalled(redis_server), "Redis to stall")  # twice: not a slow PING
    fallback = await targets.decide("random", 0.3)
    assert not state.up  # decided by the replica's own controller
    stall.join()
    await state.aclose()
    assert fallback.threshold == pytest.approx(0.70)  # 30 of the window's 100 scores at or above it; 0.0 with the debt


async def test_after_a_rest_one_operation_tries_redis_while_the_others_decide_locally(redis_server: RedisServer) -> None:
    """Redis unreachable without refusing (a partition): each retry interval costs one operation
    a timeout, not every operation that starts while the trial waits."""
    import asyncio

    from server.shared_state import SharedState, SharedStateUnavailable

    state = SharedState(redis_server.url, "trial:", 0.2, 0.3, 4)
    tried = 0

    async def unanswered() -> None:
        nonlocal tried
        tried += 1
        await asyncio.sleep(5)

    async def attempt() -> bool:
        try:
            await state.run("sticky_get", unanswered)
        except SharedStateUnavailable as error:
            return error.attempted
        return True

    assert await attempt() and tried == 1 and not state.up
    await asyncio.sleep(0.35)  # past the rest

    attempted = await asyncio.gather(*(attempt() for _ in range(10)))
    assert tried == 2 and attempted.count(True) == 1
    await asyncio.sleep(0.35)  # past the rest after the failed trial
    assert await state.run("sticky_get", lambda: state.redis.ping()) is True and state.up  # once it answers, all use it
    await state.aclose()


async def test_a_burst_beyond_the_connection_pool_is_not_taken_for_a_failed_redis(redis_server: RedisServer) -> None:
    """More operations at once than ROUTEGATE_REDIS_MAX_CONNECTIONS: an operation waits for a free
    connection within its deadline (the wait and the call share it); one that runs out of time is
    decided in-process and counted as busy, and Redis stays up for every other operation (taken
    for failed, it would rest for the retry interval)."""
    import asyncio

    from server import metrics
    from server.shared_state import SharedState, SharedStateUnavailable

    state = SharedState(redis_server.url, "burst:", 2.0, 5.0, 1)
    pool = state.redis.connection_pool
    busy_before = metrics.SHARED_STATE_BUSY.labels("sticky_get")._value.get()
    errors_before = metrics.SHARED_STATE_ERRORS.labels("sticky_get")._value.get()

    async def hold_a_connection() -> None:
        connection = await pool.get_connection()
        try:
            await asyncio.sleep(0.8)
        finally:
            await pool.release(connection)

    async def attempt() -> tuple[str, float]:
        started = time.monotonic()
        try:  # each holds the one connection for 0.8 s: the third gets it at 1.6 s, the fourth never
            await state.run("sticky_get", hold_a_connection)
            outcome = "answered"
        except SharedStateUnavailable as error:
            assert error.busy
            outcome = "cut short" if error.attempted else "no connection"
        return outcome, time.monotonic() - started

    results = await asyncio.gather(*(attempt() for _ in range(4)))
    assert sorted(outcome for outcome, _ in results) == ["answered", "answered", "cut short", "no connection"]
    assert max(elapsed for _, elapsed in results) < 2.0 + 1.0  # one deadline for the wait and the call, not two
    assert state.up and metrics.shared_state_up()._value.get() == 1
    assert metrics.SHARED_STATE_BUSY.labels("sticky_get")._value.get() == busy_before + 2
    assert metrics.SHARED_STATE_ERRORS.labels("sticky_get")._value.get() == errors_before
    assert await state.run("sticky_get", lambda: state.redis.ping()) is True  # no rest began
    await state.aclose()


async def test_a_busy_redis_leaves_the_route_to_this_replicas_window_without_its_slice_debt(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """While Redis decides, this replica's own slice of decisions may be all strong (it got the hard
    prompts): a decision that finds every connection busy uses this replica's window at the share
    wanted, not a feedback debt run up by decisions the shared controller made."""
    from server.shared_state import SharedState
    from server.shared_targets import SharedTargets
    from server.targets import Targets

    state = SharedState(redis_server.url, "slice:", 0.3, 5.0, 1)
    targets = SharedTargets(Targets(window=500, feedback_horizon=100, checkpoint_dir=tmp_path), state)
    await targets.decide("mf", 0.3)  # Redis decides this route
    scores = [index / 199 for index in range(200)]
    for score in scores:
        await targets.record("mf", 0.3, 0.3, True, score)  # every one of this slice went strong
    await state._slots.acquire()  # the process's one connection is in use for longer than the deadline
    try:
        decision = await targets.decide("mf", 0.3)
    finally:
        state._slots.release()
    assert decision.threshold == pytest.approx(sorted(scores)[140])  # 60 of the 200 (30%) at or above it
    assert state.up
    await state.aclose()


async def test_a_conversation_kept_in_redis_never_goes_back_to_a_less_capable_model(redis_server: RedisServer) -> None:
    """Two replicas answer turns of one conversation at once with different models: whichever
    remembers last, Redis keeps the more capable one."""
    from server.conversations import StickyStore
    from server.shared_state import SharedState
    from server.shared_sticky import SharedSticky

    state = SharedState(redis_server.url, "raise:", 1.0, 1.0, 4)
    first, second = (SharedSticky(StickyStore(100, 60.0), state) for _ in range(2))
    order = ["small", "medium", "large"]
    await first.remember("conversation", "large", order)
    await second.remember("conversation", "medium", order)  # this replica never saw the large turn
    assert redis_server.client().get("raise:sticky:conversation") == "large"
    assert 0 < redis_server.client().pttl("raise:sticky:conversation") <= 60_000
    assert await SharedSticky(StickyStore(100, 60.0), state).recall("conversation") == "large"
    await second.remember("conversation", "large", order)
    await first.remember("conversation", "small", ["small", "large"])  # a name the order ranks lower
    assert redis_server.client().get("raise:sticky:conversation") == "large"
    await state.aclose()


async def test_a_replica_that_remembers_a_more_capable_model_than_redis_keeps_it(redis_server: RedisServer) -> None:
    """Redis lost the key (eviction, a restart) and another replica then remembered a less capable
    model: the replica that saw the capable turn still answers with it, and raises Redis to it
    again, so that the other replica follows."""
    from server.conversations import StickyStore
    from server.shared_state import SharedState
    from server.shared_sticky import SharedSticky

    state = SharedState(redis_server.url, "lost:", 1.0, 1.0, 4)
    first, second = (SharedSticky(StickyStore(100, 60.0), state) for _ in range(2))
    order = ["small", "medium", "large"]
    await first.remember("conversation", "large", order)
    redis_server.client().delete("lost:sticky:conversation")
    await second.remember("conversation", "medium", order)  # the next turn landed on the other replica
    assert await first.recall("conversation", order) == "large"
    await _until(lambda: redis_server.client().get("lost:sticky:conversation") == "large")  # written back
    assert await second.recall("conversation", order) == "large"  # the other replica follows Redis up
    await state.aclose()


async def test_closing_the_shared_state_closes_its_connections(redis_server: RedisServer) -> None:
    """A worker that stops (SIGHUP, scale-in) leaves no idle connections on Redis."""
    import asyncio

    from server.shared_state import SharedState

    watcher = redis_server.client()
    state = SharedState(redis_server.url, "close:", 1.0, 1.0, 4)
    redis = state.redis

    async def named_ping() -> None:  # each pooled connection, named so that only this test's are counted
        await redis.client_setname("routegate-close-test")

    await asyncio.gather(*(state.run("name", named_ping) for _ in range(4)))

    def ours() -> int:
        return sum(client["name"] == "routegate-close-test" for client in watcher.client_list())

    assert ours() >= 1
    await state.aclose()
    deadline = time.monotonic() + 5
    while ours() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert ours() == 0


async def test_a_route_whose_router_is_not_loaded_is_kept_in_process(redis_server: RedisServer, tmp_path: Path) -> None:
    """A forced decision on a target route whose router failed to load: the scale of its scores is
    unknown (no scorer identity), so nothing of it goes to a window in Redis."""
    from server.shared_state import SharedState
    from server.shared_targets import SharedTargets
    from server.targets import Targets

    state = SharedState(redis_server.url, "unloaded:", 2.0, 1.0, 4)
    targets = SharedTargets(Targets(window=10, feedback_horizon=50, checkpoint_dir=tmp_path), state, shared_name=lambda _: None)
    await targets.record("bert", 0.3, 0.3, strong=True)
    assert (await targets.decide("bert", 0.3)).target == 0.3
    await state.aclose()
    assert redis_server.client().keys("unloaded:*") == []


async def test_a_route_redis_lost_without_an_error_is_seeded_again(redis_server: RedisServer, tmp_path: Path) -> None:
    """A restart without persistence or a failover to an empty replica raises nothing: the next
    decision finds the window empty and fills it from the calibration again."""
    import json

    from server.shared_state import SharedState
    from server.shared_targets import SharedTargets
    from server.targets import Targets

    (tmp_path / "mf").mkdir()
    table = {"0.0": 0.95, "0.1": 0.8, "0.3": 0.62, "0.5": 0.5, "0.9": 0.2, "1.0": 0.05}
    (tmp_path / "mf" / "calibration.json").write_text(json.dumps({"router": "mf", "thresholds": table}))
    state = SharedState(redis_server.url, "lost:", 2.0, 1.0, 4)
    targets = SharedTargets(Targets(window=500, feedback_horizon=100, checkpoint_dir=tmp_path), state)
    assert (await targets.decide("mf", 0.3)).threshold == pytest.approx(0.62, abs=0.02)
    client = redis_server.client()
    client.delete(*client.keys("lost:*"))
    assert (await targets.decide("mf", 0.3)).threshold == pytest.approx(0.62, abs=0.02)  # not 1 - 0.3 until scores come
    assert client.zcard("lost:target:{mf:0.3}:scores") == 200
    client.delete(*client.keys("lost:*"))
    for score in (0.05, 0.1):  # answers in flight when Redis came back begin the window again
        await targets.record("mf", 0.3, 0.3, False, score)
    assert client.zcard("lost:target:{mf:0.3}:scores") == 2
    assert (await targets.decide("mf", 0.3)).threshold == pytest.approx(0.62, abs=0.02)  # not the two scores' quantile
    assert client.zcard("lost:target:{mf:0.3}:scores") == 202
    await state.aclose()


async def test_a_stopping_replica_writes_the_spend_it_owes_even_inside_a_rest(redis_server: RedisServer) -> None:
    """One failed call starts a rest in which spend waits, unsent; the flush as the replica stops
    tries Redis all the same, which is back: the other replicas see every dollar."""
    import asyncio

    from server.shared_state import SharedState, SharedStateUnavailable
    from server.shared_targets import SharedBudget
    from server.targets import DailyBudget

    state = SharedState(redis_server.url, "owed:", 0.25, 30.0, 4)
    budget = SharedBudget(DailyBudget(100.0), state)
    client = redis_server.client()
    await budget.record_cost("strong", 1.0, 1.0)

    async def refused() -> None:
        raise redis.exceptions.ConnectionError("refused")

    with pytest.raises(SharedStateUnavailable):
        await state.run("budget_add", refused)  # a 30 s rest begins, though Redis is up
    await budget.record_cost("strong", 4.0, 4.0)  # waits, unsent
    [key] = client.keys("owed:budget:*")
    assert float(client.hget(key, "spent")) == 1.0
    await asyncio.wait_for(budget.flush(), 2.0)
    assert float(client.hget(key, "spent")) == 5.0
    await state.aclose()


async def test_an_answer_begun_before_a_failure_does_not_end_its_rest(redis_server: RedisServer) -> None:
    import asyncio

    from server.shared_state import SharedState, SharedStateUnavailable

    state = SharedState(redis_server.url, "late:", 0.2, 0.5, 4)

    async def answered_late() -> str:
        await asyncio.sleep(0.1)
        return "late"

    async def refused() -> None:
        raise redis.exceptions.ConnectionError("refused")

    late = asyncio.create_task(state.run("sticky_get", answered_late))
    await asyncio.sleep(0.02)
    with pytest.raises(SharedStateUnavailable):
        await state.run("sticky_set", refused)  # Redis fails: a rest of 0.5 s begins
    assert await late == "late" and not state.up
    with pytest.raises(SharedStateUnavailable) as skipped:
        await state.run("sticky_get", lambda: state.redis.ping())
    assert skipped.value.attempted is False  # still resting
    await state.aclose()


async def test_a_cancelled_request_stays_cancelled_when_its_redis_answer_lands_at_once(redis_server: RedisServer) -> None:
    """A client that leaves just as a Redis answer arrives: the request is cancelled, not carried on
    to the upstream (Python 3.11's ``wait_for`` would return the answer and drop the cancel)."""
    import asyncio

    from server.shared_state import SharedState

    state = SharedState(redis_server.url, "cancel:", 2.0, 1.0, 4)
    answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def call() -> str:
        return await answer

    request = asyncio.create_task(state.run("sticky_read", call))
    await asyncio.sleep(0.01)  # the operation waits on Redis's answer
    answer.set_result("value")
    request.cancel()  # in the same turn of the loop
    with pytest.raises(asyncio.CancelledError):
        await request
    await state.aclose()


async def test_a_connection_that_redis_closed_while_idle_is_opened_again_not_taken_for_a_failed_redis(
    redis_server: RedisServer,
) -> None:
    """Redis's ``timeout`` (or a proxy in between) closes connections left idle: the first
    operations after the pause reconnect and succeed, rather than counting a healthy Redis as down
    and resting from it."""
    import asyncio

    from server import metrics
    from server.shared_state import SharedState

    state = SharedState(redis_server.url, "idle:", 2.0, 5.0, 4)
    errors_before = metrics.SHARED_STATE_ERRORS.labels("sticky_get")._value.get()
    admin = redis_server.client()
    admin.config_set("timeout", 1)
    try:
        assert await asyncio.gather(*(state.run("sticky_get", lambda: state.redis.ping()) for _ in range(4))) == [True] * 4
        await asyncio.sleep(2.5)  # Redis closes the four idle connections
        assert await asyncio.gather(*(state.run("sticky_get", lambda: state.redis.ping()) for _ in range(4))) == [True] * 4
        assert state.up and metrics.shared_state_up()._value.get() == 1
        assert metrics.SHARED_STATE_ERRORS.labels("sticky_get")._value.get() == errors_before
    finally:
        admin.config_set("timeout", 0)
        await state.aclose()


async def test_a_conversation_remembered_while_redis_was_away_is_shared_once_it_answers(redis_server: RedisServer) -> None:
    """Replica A remembers a strong conversation while Redis is down, and one whose key Redis
    lost: once Redis answers A again, replica B finds both."""
    import asyncio

    from server.conversations import StickyStore
    from server.shared_state import SharedState
    from server.shared_sticky import SharedSticky

    state_a, state_b = (SharedState(redis_server.url, "unshared:", 0.5, 0.3, 4) for _ in range(2))
    now = [time.monotonic()]
    replica_a = SharedSticky(StickyStore(100, 3600, clock=lambda: now[0]), state_a)
    replica_b = SharedSticky(StickyStore(100, 3600), state_b)
    try:
        redis_server.kill()
        await replica_a.remember("during-outage")
        redis_server.start()
        await asyncio.sleep(0.4)  # past A's rest after the failure
        now[0] += 1000  # the outage lasted 1000 s on A's clock: the conversation has 2600 s left
        assert not await replica_b.is_strong("during-outage")  # A has not written it yet
        assert not await replica_a.is_strong("another conversation")  # A's first operation since: it writes what it kept
        await _until(lambda: redis_server.client().exists("unshared:sticky:during-outage") == 1)
        assert 0 < redis_server.client().pttl("unshared:sticky:during-outage") <= 2600 * 1000  # the time A had left
        assert await replica_b.is_strong("during-outage")

        await replica_a.remember("lost")
        redis_server.client().delete("unshared:sticky:lost")  # as a restart without persistence would
        assert await replica_a.is_strong("lost")  # A still knows it, and gives it back to Redis
        await _until(lambda: redis_server.client().exists("unshared:sticky:lost") == 1)
        assert await replica_b.is_strong("lost")
    finally:
        await state_a.aclose()
        await state_b.aclose()


async def _until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Wait (letting the event loop run) until ``condition()`` holds."""
    import asyncio

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_conversations_redis_did_not_take_in_a_write_back_are_kept_for_the_next(redis_server: RedisServer) -> None:
    """Redis fails again just as the background write-back starts: what it was writing is kept,
    and written once Redis answers again."""
    import asyncio

    from server.conversations import StickyStore
    from server.shared_state import SharedState
    from server.shared_sticky import SharedSticky

    state_a, state_b = (SharedState(redis_server.url, "kept:", 0.5, 0.3, 4) for _ in range(2))
    replica_a, replica_b = (SharedSticky(StickyStore(100, 3600), state) for state in (state_a, state_b))
    try:
        redis_server.kill()
        await replica_a.remember("during-outage")
        redis_server.start()
        await asyncio.sleep(0.4)  # past A's rest after the failure
        assert not await replica_a.is_strong("another conversation")  # Redis answers: the write-back is scheduled
        redis_server.kill()  # before it runs
        await asyncio.sleep(0.2)  # it fails
        redis_server.start()
        await asyncio.sleep(0.4)
        assert not await replica_b.is_strong("during-outage")
        assert not await replica_a.is_strong("a third conversation")  # Redis answers A again
        await _until(lambda: redis_server.client().exists("kept:sticky:during-outage") == 1)
        assert await replica_b.is_strong("during-outage")
    finally:
        await state_a.aclose()
        await state_b.aclose()
