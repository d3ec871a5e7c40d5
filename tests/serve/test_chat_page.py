"""The chat page in a real headless browser (Debian's chromium through selenium): type a message,
see tokens arrive, see the answer the API gives for the same conversation."""
import shutil
import time

import openai
import pytest

pytestmark = pytest.mark.slow  # a real server under load (the fast subset: -m 'not slow')


def test_chat_page_streams_an_answer(server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    assert shutil.which("chromium") and shutil.which("chromedriver"), "apt install chromium chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(server.url + "/")
        for field, value in (("temperature", "0"), ("max_tokens", "24")):
            box = driver.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)
        # every change the page makes to the answer, recorded in the browser as it happens
        driver.execute_script("""window.lengths = [];
            new MutationObserver(() => { const a = document.querySelectorAll('.msg.assistant');
                if (a.length) window.lengths.push(a[a.length - 1].textContent.length); })
            .observe(document.getElementById('log'), {childList: true, subtree: true, characterData: true});""")
        driver.find_element(By.ID, "input").send_keys("Tell me a story.", Keys.ENTER)
        deadline = time.time() + 60
        while time.time() < deadline:
            answers = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")
            if answers and answers[-1].get_attribute("data-finish"):
                break
            time.sleep(0.05)
        lengths = driver.execute_script("return window.lengths;")
        answer = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1]
        assert answer.get_attribute("data-finish") in ("length", "stop")
        assert driver.find_elements(By.CSS_SELECTOR, ".msg.user")[-1].text == "Tell me a story."
        shown = answer.get_attribute("textContent")  # the raw text (.text folds control characters)
        pieces = int(answer.get_attribute("data-pieces"))
    finally:
        driver.quit()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    want = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Tell me a story."}],
                                          max_tokens=24, temperature=0, top_p=0.95).choices[0].message.content
    assert shown == want.strip() and shown  # the same answer the API gives (the page shows it trimmed)
    assert pieces > 2 and len(set(lengths)) > 2  # the text grew piece by piece, as the tokens arrived
