"""The chat page in a real headless browser (Debian's chromium through selenium): type a message,
see tokens arrive, see the answer the API gives for the same conversation; with a key-protected
server and a conversation that outgrows the context, the oldest turns are dropped and the page says so."""
import shutil
import time

import openai
import pytest
from support import Server

pytestmark = pytest.mark.slow  # a real server under load (the fast subset: -m 'not slow')


@pytest.fixture(scope="module")
def driver():
    """One browser for the module (each test opens its own server's page: another origin)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert shutil.which("chromium") and shutil.which("chromedriver"), "apt install chromium chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def _fill(driver, **fields):
    from selenium.webdriver.common.by import By
    for field, value in fields.items():
        box = driver.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)


def _say(driver, text, timeout=60):
    """Send `text`; wait for the answer bubble to finish (or turn into an error) and return it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    before = len(driver.find_elements(By.CSS_SELECTOR, ".msg.assistant, .msg.error"))
    driver.find_element(By.ID, "input").send_keys(text, Keys.ENTER)
    deadline = time.time() + timeout
    while time.time() < deadline:
        answers = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant, .msg.error")
        if len(answers) > before and (answers[-1].get_attribute("data-finish") or "error" in
                                      answers[-1].get_attribute("class")):
            return answers[-1]
        time.sleep(0.05)
    raise AssertionError(f"no answer to {text!r} within {timeout}s")


def test_chat_page_streams_an_answer(server, driver):
    from selenium.webdriver.common.by import By
    driver.get(server.url + "/")
    _fill(driver, temperature="0", max_tokens="24")
    # every change the page makes to the answer, recorded in the browser as it happens
    driver.execute_script("""window.lengths = [];
        new MutationObserver(() => { const a = document.querySelectorAll('.msg.assistant');
            if (a.length) window.lengths.push(a[a.length - 1].textContent.length); })
        .observe(document.getElementById('log'), {childList: true, subtree: true, characterData: true});""")
    answer = _say(driver, "Tell me a story.")
    lengths = driver.execute_script("return window.lengths;")
    assert answer.get_attribute("data-finish") in ("length", "stop")
    assert driver.find_elements(By.CSS_SELECTOR, ".msg.user")[-1].text == "Tell me a story."
    shown = answer.get_attribute("textContent")  # the raw text (.text folds control characters)
    pieces = int(answer.get_attribute("data-pieces"))
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    want = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Tell me a story."}],
                                          max_tokens=24, temperature=0, top_p=0.95).choices[0].message.content
    assert shown == want.strip() and shown  # the same answer the API gives (the page shows it trimmed)
    assert pieces > 2 and len(set(lengths)) > 2  # the text grew piece by piece, as the tokens arrived


def test_chat_page_sends_the_key_and_drops_the_oldest_turns_when_full(tiny_hf_with_tokenizer, driver):
    from selenium.webdriver.common.by import By
    s = Server(tiny_hf_with_tokenizer, "--max_batch", "2", "--model_name", "tiny", "--api_key", "s3cret")
    try:
        driver.get(s.url + "/")
        _fill(driver, temperature="0", max_tokens="40")
        refused = _say(driver, "Hello there.")
        assert "API key" in refused.text and "error" in refused.get_attribute("class")
        _fill(driver, key="s3cret")
        said = ["Tell me about the quick brown fox.", "And then what happened to the lazy dog?",
                "Once upon a time, there was a model.", "What does GPT-Neo generate?"]
        for text in said:
            answer = _say(driver, text)
            assert answer.get_attribute("data-finish") in ("length", "stop"), answer.text
            if driver.find_elements(By.CSS_SELECTOR, ".msg.notice"):
                break
        notice = driver.find_elements(By.CSS_SELECTOR, ".msg.notice")
        assert notice and "left out" in notice[0].text and "128-token context" in notice[0].text
        sent = driver.execute_script("return messages;")  # the conversation as the page now keeps it
        shown = answer.get_attribute("textContent")
        assert sent[-1] == {"role": "assistant", "content": shown} and sent[0]["content"] != said[0]
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="s3cret", max_retries=0)
        want = client.chat.completions.create(model="tiny", messages=sent[:-1], max_tokens=40, temperature=0,
                                              top_p=0.95).choices[0].message.content
        assert shown == want.strip()  # the page sent exactly the shortened conversation
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("scope", ["prompts", "outputs"])
def test_chat_page_shows_the_moderation_gate_plainly(tiny_hf_with_tokenizer, driver, tmp_path, scope):
    """A gate that flags everything (a fresh classifier head, a threshold of 0.01): a refused message
    is a notice saying so, not an error; an answer the gate stops says where it stopped."""
    import jax
    from selenium.webdriver.common.by import By

    from neojax import checkpoint
    from neojax.checkpoint.hf import save_hf_classifier
    from neojax.model.classifier import init_classifier
    model = checkpoint.load(tiny_hf_with_tokenizer)
    save_hf_classifier(str(tmp_path / "gate"), init_classifier(model.config, 2, jax.random.key(0), model.params),
                       model.config, ["ok", "flagged"], model.tokenizer)
    s = Server(tiny_hf_with_tokenizer, "--max_batch", "2", "--model_name", "tiny", "--moderation",
               str(tmp_path / "gate"), "--moderation_threshold", "0.01", "--moderate", scope)
    try:
        driver.get(s.url + "/")
        _fill(driver, temperature="0", max_tokens="40")
        driver.find_element(By.ID, "input").send_keys("Tell me a story.\n")
        deadline = time.time() + 60
        while time.time() < deadline and not driver.find_elements(By.CSS_SELECTOR, ".refusal"):
            time.sleep(0.05)
        notice = driver.find_elements(By.CSS_SELECTOR, ".refusal")
        assert notice and not driver.find_elements(By.CSS_SELECTOR, ".msg.error")
        if scope == "prompts":
            assert notice[-1].text.startswith("user message 0 was refused by the moderation gate (flag score ")
            assert not driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")  # nothing was generated
        else:
            answer = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1]
            assert answer.get_attribute("data-finish") == "content_filter" and answer.text == ""
            assert notice[-1].text == "The moderation gate stopped this answer here."
    finally:
        assert s.stop() == 0, "".join(s.lines)
