#!/usr/bin/env python3
"""The console in a real headless Chromium (Debian's chromium and chromedriver, Selenium from PyPI)
against a real node and Redis; called by scripts/check-console.sh.

As an operator: sign in, open a user, see a hostile key name as text, create a key, use it on the
data plane (200), see the use on its chart after the flush, revoke it in the page (the data plane
then answers 401). As that user, through a console link: create and revoke one of their own keys,
and see no other user's keys. The browser console must stay free of errors. Screenshots go to the
folder given.
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
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.support.ui import WebDriverWait

HOSTILE = "<img src=x onerror=alert(1)>"


def status_of(url, key):
    request = urllib.request.Request(url, headers={"X-API-Key": key})
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


def key_id_for(control, admin, user, name):
    request = urllib.request.Request(f"{control}/v1/keys?user={user}", headers={"X-API-Key": admin})
    with urllib.request.urlopen(request, timeout=5) as response:
        keys = json.load(response)["keys"]
    return next(key["id"] for key in keys if key["name"] == name)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--control", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--admin-key", required=True)
    parser.add_argument("--other-key-id", required=True, help="a key of another user, which the user must not see")
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
        # The node flushes usage every second: reopen the user until the chart shows the use.
        label = ""
        for _ in range(10):
            time.sleep(1)
            driver.find_element(By.XPATH, "//ul[@id='user-list']//button[text()='alice']").click()
            page.wait.until(lambda _: page.row(laptop).find_elements(By.CSS_SELECTOR, "svg.spark"))
            label = page.row(laptop).find_element(By.CSS_SELECTOR, "svg.spark").get_attribute("aria-label")
            if label.startswith("1 uses"):
                break
        assert label.startswith("1 uses"), label
        assert page.row(laptop).find_elements(By.CSS_SELECTOR, "svg.spark rect:not(.axis)"), "no bar for the use"
        page.shot("operator-usage")
        page.revoke(laptop)
        deadline = time.time() + 1
        while status_of(f"{args.data}/auth", key) != 401:
            assert time.time() < deadline, "the revoked key is still accepted"
            time.sleep(0.02)

        # A console link for alice, made in the page, opened in a fresh tab state.
        driver.find_element(By.ID, "console-link").click()
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
        own = page.create("phone")
        phone = key_id_for(args.control, args.admin_key, "alice", "phone")
        assert status_of(f"{args.data}/auth", own) == 200
        page.shot("user-api-keys")
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
        # The link was single use: opening it again signs nobody in.
        driver.execute_script("sessionStorage.clear()")
        driver.get("about:blank")
        driver.get(link)
        page.wait.until(lambda _: "not valid, was used already" in page.text("notice"))
        page.visible("sign-in")
        errors = [entry for entry in page.errors() if "/console/session" not in entry["message"]]
        assert not errors, errors
        print("console checks passed: operator and user flows, hostile name as text, no console errors")
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main())
