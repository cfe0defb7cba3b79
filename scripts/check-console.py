#!/usr/bin/env python3
"""The console in a real headless Chromium (Debian's chromium and chromedriver, Selenium from PyPI)
against a real node and Redis; called by scripts/check-console.sh.

As an operator: sign in, open a user, see a hostile key name as text, create a key, use it on the
data plane (200), see the use on its chart after the flush, open its page (hourly and daily charts),
change its name, scopes, expiry, metadata, rate limits and credits there, disable and enable it
(401, then 200), revoke it in the page (the data plane then answers 401); set a user's limits;
revoke all of another user's keys. As that user, through a console link that lets them grant one
scope: create a key with that scope, open its page, rotate and revoke it, and see no other user's
keys. The browser console must stay free of errors. Screenshots go to the folder given.
"""
import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as conditions
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.support.ui import WebDriverWait

HOSTILE = "<img src=x onerror=alert(1)>"


def status_of(url, key, scopes=None):
    headers = {"X-API-Key": key}
    if scopes:
        headers["X-Keygate-Required-Scopes"] = scopes
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400", "--disable-gpu"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


class Console:
    def __init__(self, driver, base, shots):
        self.driver, self.base, self.shots = driver, base, shots
        # The page re-renders its rows after each change: an element found before may be replaced.
        self.wait = WebDriverWait(driver, 10, ignored_exceptions=(StaleElementReferenceException,))

    def visible(self, element_id):
        return self.wait.until(conditions.visibility_of_element_located((By.ID, element_id)))

    def text(self, element_id):
        return self.driver.find_element(By.ID, element_id).text

    def rows(self):
        return self.driver.find_elements(By.CSS_SELECTOR, "#key-rows tr")

    def row(self, key_id):
        return self.wait.until(conditions.presence_of_element_located((By.CSS_SELECTOR, f'#key-rows tr[data-key-id="{key_id}"]')))

    def spark_label(self, key_id):
        """The 48-hour chart's label in a key's row, or None while the row or its chart is not drawn."""
        charts = self.driver.find_elements(By.CSS_SELECTOR, f'#key-rows tr[data-key-id="{key_id}"] svg.spark')
        try:
            return charts[0].get_attribute("aria-label") if charts else None
        except StaleElementReferenceException:
            return None

    def shot(self, name):
        self.driver.save_screenshot(os.path.join(self.shots, f"{name}.png"))

    def errors(self):
        return [entry for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]

    def create(self, name):
        self.driver.find_element(By.ID, "create-name").send_keys(name)
        self.driver.find_element(By.CSS_SELECTOR, "#create-form button[type=submit]").click()
        self.visible("created")
        key = self.text("created-key")
        assert key.startswith("kg_"), key
        return key

    def revoke(self, key_id):
        self.row(key_id).find_element(By.CSS_SELECTOR, "button.danger").click()
        self.wait.until(conditions.alert_is_present()).accept()
        self.wait.until(lambda _: "revoked" in self.row(key_id).text)


def get_json(control, admin, path):
    request = urllib.request.Request(f"{control}{path}", headers={"X-API-Key": admin})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def key_id_for(control, admin, user, name):
    keys = get_json(control, admin, f"/v1/keys?user={user}")["keys"]
    return next(key["id"] for key in keys if key["name"] == name)


def wait_for_status(url, key, expected, scopes=None):
    """The data plane's answer for `key`, within the invalidation bound (1 s here)."""
    deadline = time.time() + 1
    while status_of(url, key, scopes) != expected:
        assert time.time() < deadline, f"the data plane does not answer {expected} for the key"
        time.sleep(0.02)


def set_field(driver, element_id, value):
    """Types into a field; a datetime-local field takes its value as the page's script would."""
    field = driver.find_element(By.ID, element_id)
    if field.get_attribute("type") == "datetime-local":
        driver.execute_script("arguments[0].value = arguments[1]", field, value)
    else:
        field.clear()
        field.send_keys(value)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--control", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--admin-key", required=True)
    parser.add_argument("--other-key-id", required=True, help="a key of another user, which the user must not see")
    parser.add_argument("--carol-key", required=True, help="a key of user carol, whose keys the operator revokes at once")
    parser.add_argument("--screenshots", required=True)
    args = parser.parse_args()
    os.makedirs(args.screenshots, exist_ok=True)

    driver = browser()
    try:
        page = Console(driver, args.control, args.screenshots)
        # Operator: sign in with the admin key.
        driver.get(f"{args.control}/console/")
        page.visible("sign-in-key").send_keys(args.admin_key)
        driver.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
        page.visible("users")
        page.wait.until(lambda _: driver.find_elements(By.XPATH, "//ul[@id='user-list']//button[text()='alice']"))
        driver.find_element(By.XPATH, "//ul[@id='user-list']//button[text()='alice']").click()
        page.visible("keys")
        # The hostile name is text: shown as typed, no image element, no alert.
        page.wait.until(lambda _: any(HOSTILE in row.text for row in page.rows()))
        assert not driver.find_elements(By.CSS_SELECTOR, "#key-rows img"), "a key name became HTML"
        page.shot("operator-user-keys")
        # The node's health and the audit log, filtered to alice's events.
        page.wait.until(lambda _: "ready" in page.text("node-status") and "Redis reachable" in page.text("node-status"))
        page.driver.find_element(By.ID, "audit-user").send_keys("alice")
        page.driver.find_element(By.CSS_SELECTOR, "#audit-form button").click()
        page.wait.until(lambda _: page.driver.find_elements(By.CSS_SELECTOR, "#audit-rows tr"))
        audit = page.driver.find_elements(By.CSS_SELECTOR, "#audit-rows tr")
        assert audit and all(" alice " in f" {row.text} " for row in audit), [row.text for row in audit]

        key = page.create("laptop")
        page.shot("operator-created-key")
        assert status_of(f"{args.data}/auth", key) == 200
        laptop = key_id_for(args.control, args.admin_key, "alice", "laptop")
        # A refused request (a scope the key lacks: 403) is charted too, in red, not as a use.
        assert status_of(f"{args.data}/auth", key, "billing:write") == 403
        # The node flushes usage every second: reopen the user until the chart shows the use.
        expected = "1 use in the last 48 hours, 1 refused"
        label = None
        for _ in range(10):
            time.sleep(1)
            driver.find_element(By.XPATH, "//ul[@id='user-list']//button[text()='alice']").click()
            try:
                # The click re-renders the rows: read the chart of whichever row is there now.
                label = WebDriverWait(driver, 2, ignored_exceptions=(StaleElementReferenceException,)).until(
                    lambda _: page.spark_label(laptop) == expected and expected)
                break
            except TimeoutException:
                label = page.spark_label(laptop)
        assert label == expected, label
        assert page.row(laptop).find_elements(By.CSS_SELECTOR, "svg.spark rect:not(.axis)"), "no bar for the use"
        page.shot("operator-usage")

        # The key's page: hourly and daily charts, then every change an operator makes.
        page.row(laptop).find_element(By.CSS_SELECTOR, "button.link").click()
        page.visible("key-page")
        page.wait.until(lambda _: page.driver.find_elements(By.CSS_SELECTOR, "#chart-daily svg"))
        hourly = driver.find_element(By.CSS_SELECTOR, "#chart-hourly svg").get_attribute("aria-label")
        daily = driver.find_element(By.CSS_SELECTOR, "#chart-daily svg").get_attribute("aria-label")
        assert hourly == "1 use in the last 48 hours, 1 refused" and daily == "1 use in the last 90 days, 1 refused", (hourly, daily)
        for element_id, value in [("edit-name", "laptop-2"), ("edit-scopes", "orders:read orders:write"),
                                  ("edit-expires", "2031-01-02T03:04"), ("edit-metadata", "team=web\nplan=pro"),
                                  ("edit-rate-limits", "1000/1m hourly=50000/1h"), ("edit-credits", "5000"), ("edit-refill", "5000/month")]:
            set_field(driver, element_id, value)
        driver.find_element(By.CSS_SELECTOR, "#edit-form button[type=submit]").click()
        page.wait.until(lambda _: "Saved" in page.text("notice"))
        page.wait.until(lambda _: page.text("key-title").startswith("laptop-2"))
        record = get_json(args.control, args.admin_key, f"/v1/keys/{laptop}")
        assert record["name"] == "laptop-2" and record["scopes"] == ["orders:read", "orders:write"], record
        assert record["expires_at"].startswith("2031-01-0") and record["metadata"] == {"team": "web", "plan": "pro"}, record
        assert [(limit["name"], limit["limit"], limit["duration_ms"]) for limit in record["rate_limits"]] == [("1m", 1000, 60000), ("hourly", 50000, 3600000)], record
        assert record["credits"]["refill"] == {"amount": 5000, "interval": "monthly"} and record["credits"]["remaining"] <= 5000, record
        assert "team=web" in page.text("key-details") and "5000/month" in page.text("key-details")
        page.shot("operator-key-page")
        # Nothing changed: nothing is sent; a bad rate limit is explained and sends nothing.
        driver.find_element(By.CSS_SELECTOR, "#edit-form button[type=submit]").click()
        page.wait.until(lambda _: page.text("notice") == "Nothing changed.")
        set_field(driver, "edit-rate-limits", "lots")
        driver.find_element(By.CSS_SELECTOR, "#edit-form button[type=submit]").click()
        page.wait.until(lambda _: "A rate limit is [name=]limit/duration" in page.text("notice"))
        # A refusal from the API is shown with its field.
        set_field(driver, "edit-rate-limits", "0/1m")
        driver.find_element(By.CSS_SELECTOR, "#edit-form button[type=submit]").click()
        page.wait.until(lambda _: "rate_limits" in page.text("notice"))
        # Chromium logs that refusal as a failed load; it was asked for, and is the only error so far.
        errors = page.errors()
        assert len(errors) == 1 and "422" in errors[0]["message"], errors
        driver.find_element(By.XPATH, "//p[@id='key-actions']/button[text()='Disable']").click()
        page.wait.until(lambda _: "Status\ndisabled" in page.text("key-details"))
        wait_for_status(f"{args.data}/auth", key, 401)
        driver.find_element(By.XPATH, "//p[@id='key-actions']/button[text()='Enable']").click()
        page.wait.until(lambda _: "Status\nactive" in page.text("key-details"))
        wait_for_status(f"{args.data}/auth", key, 200, scopes="orders:read")
        driver.find_element(By.XPATH, "//p[@id='key-actions']/button[text()='Revoke']").click()
        page.wait.until(conditions.alert_is_present()).accept()
        page.wait.until(lambda _: "Status\nrevoked" in page.text("key-details"))
        wait_for_status(f"{args.data}/auth", key, 401)
        assert not page.driver.find_element(By.ID, "edit-form").is_displayed(), "a revoked key offers changes"
        driver.find_element(By.ID, "key-back").click()
        page.wait.until(lambda _: "revoked" in page.row(laptop).text)

        # The user's own limits, shared by all of their keys.
        set_field(driver, "user-rate-limits", "daily=100000/1d")
        driver.find_element(By.CSS_SELECTOR, "#user-limits-form button[type=submit]").click()
        page.wait.until(lambda _: "Saved the limits of alice" in page.text("notice"))
        limits = get_json(args.control, args.admin_key, "/v1/users/alice/limits")
        assert [(limit["name"], limit["limit"]) for limit in limits["rate_limits"]] == [("daily", 100000)], limits

        # Revoke all of carol's keys at once.
        set_field(driver, "user-prefix", "carol")
        driver.find_element(By.CSS_SELECTOR, "#user-search button").click()
        page.wait.until(lambda _: driver.find_elements(By.XPATH, "//ul[@id='user-list']//button[text()='carol']"))
        driver.find_element(By.XPATH, "//ul[@id='user-list']//button[text()='carol']").click()
        page.wait.until(lambda _: page.text("keys-title") == "Keys of carol" and len(page.rows()) == 2)
        assert status_of(f"{args.data}/auth", args.carol_key) == 200
        driver.find_element(By.ID, "revoke-user").click()
        page.wait.until(conditions.alert_is_present()).accept()
        page.wait.until(lambda _: "Revoked 2 keys of carol" in page.text("notice"))
        page.wait.until(lambda _: all("revoked" in row.text for row in page.rows()))
        wait_for_status(f"{args.data}/auth", args.carol_key, 401)
        driver.find_element(By.XPATH, "//ul[@id='user-list']//button[text()='carol']").click()
        set_field(driver, "user-prefix", "")
        driver.find_element(By.CSS_SELECTOR, "#user-search button").click()
        page.wait.until(lambda _: driver.find_elements(By.XPATH, "//ul[@id='user-list']//button[text()='alice']"))
        driver.find_element(By.XPATH, "//ul[@id='user-list']//button[text()='alice']").click()
        page.wait.until(lambda _: page.text("keys-title") == "Keys of alice")

        # A console link for alice that lets her grant orders:read, made in the page, opened in a fresh tab state.
        set_field(driver, "link-scopes", "orders:read")
        driver.find_element(By.CSS_SELECTOR, "#console-link-form button[type=submit]").click()
        page.wait.until(lambda _: "/console/#session=kgs_" in page.text("console-link-out"))
        link = page.text("console-link-out").split(" ")[0]
        errors = page.errors()
        assert not errors, errors
        driver.execute_script("sessionStorage.clear()")
        driver.get("about:blank")
        driver.get(link)
        page.wait.until(lambda _: page.text("who") == "Signed in as alice")
        assert "#session" not in driver.current_url, "the secret stays in the address bar"
        assert page.text("keys-title") == "Your API keys"
        # The scopes the link allows are offered as checkboxes; the key gets the one ticked.
        page.wait.until(lambda _: driver.find_elements(By.CSS_SELECTOR, "#create-scope-choices input[value='orders:read']"))
        assert not driver.find_element(By.ID, "create-scopes").is_displayed()
        driver.find_element(By.CSS_SELECTOR, "#create-scope-choices input[value='orders:read']").click()
        own = page.create("phone")
        phone = key_id_for(args.control, args.admin_key, "alice", "phone")
        assert get_json(args.control, args.admin_key, f"/v1/keys/{phone}")["scopes"] == ["orders:read"]
        assert status_of(f"{args.data}/auth", own, "orders:read") == 200
        page.shot("user-api-keys")
        # The user's key page: charts, no changes but rotate and revoke.
        page.row(phone).find_element(By.CSS_SELECTOR, "button.link").click()
        page.visible("key-page")
        page.wait.until(lambda _: driver.find_elements(By.CSS_SELECTOR, "#chart-daily svg"))
        assert not driver.find_element(By.ID, "edit-form").is_displayed(), "a user is offered an operator's changes"
        assert not driver.find_elements(By.XPATH, "//p[@id='key-actions']/button[text()='Disable']")
        driver.find_element(By.ID, "key-back").click()
        page.wait.until(lambda _: page.row(phone))
        # Rotate with a grace period: the successor is shown once and works; so does the old key, for now.
        page.row(phone).find_element(By.XPATH, ".//button[text()='Rotate']").click()
        page.wait.until(conditions.alert_is_present()).accept()  # the prompt's default: 24 hours
        page.wait.until(lambda _: page.text("created-title").startswith("The successor of phone"))
        successor = page.text("created-key")
        assert successor.startswith("kg_") and successor != own
        assert status_of(f"{args.data}/auth", successor) == 200 and status_of(f"{args.data}/auth", own) == 200
        page.revoke(phone)
        assert args.other_key_id not in driver.page_source, "another user's key is visible"
        assert not driver.find_element(By.ID, "users").is_displayed(), "a user sees the operator's users list"
        # The operator revokes the page's own key: the page's next call gets 401 and signs out.
        session_key = key_id_for(args.control, args.admin_key, "alice", "console session")
        request = urllib.request.Request(f"{args.control}/v1/keys/{session_key}/revoke", method="POST", headers={"X-API-Key": args.admin_key})
        urllib.request.urlopen(request, timeout=5).close()
        time.sleep(0.2)  # within the invalidation bound
        page.row(phone).find_element(By.CSS_SELECTOR, "button.link").click()
        page.wait.until(lambda _: "Your key was refused" in page.text("notice"))
        page.visible("sign-in")
        assert not driver.execute_script("return sessionStorage.getItem('keygate.key')"), "a refused key stays in the tab"
        page.errors()  # the 401 the page was asked to meet
        # The link was single use: opening it again signs nobody in.
        driver.execute_script("sessionStorage.clear()")
        driver.get("about:blank")
        driver.get(link)
        page.wait.until(lambda _: "not valid, was used already" in page.text("notice"))
        page.visible("sign-in")
        errors = [entry for entry in page.errors() if "/console/session" not in entry["message"]]
        assert not errors, errors
        print("console checks passed: operator and user flows, hostile name as text, no console errors")
    except Exception:
        # What the page showed when a step failed, for the person reading the CI log.
        page.shot("failure")
        notice = driver.find_elements(By.ID, "notice")
        print(f"failed at {driver.current_url}; notice: {notice[0].text if notice else '-'!r}; browser log: {driver.get_log('browser')}",
              file=sys.stderr)
        raise
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main())
